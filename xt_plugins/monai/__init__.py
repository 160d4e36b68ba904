"""MONAI integration: XTNet, whole-slide datasets and tissue masks, slide inferers, training glue.

From a folder of slides to a trained xT model, heatmaps and GeoJSON::

    data = read_slide_data("slides/")                      # [{"image": path, "label": 0|1}]
    ds = NestedRegionWSIDataset(data, mode="slide", mpp=0.5, region_size=256)
    loader = DataLoader(ds, batch_size=1, collate_fn=slide_collate)
    trainer = SupervisedTrainer(..., train_data_loader=loader, network=XTNet(),
                                inferer=SlideStreamingInferer(), prepare_batch=prepare_slide_batch)
    WholeSlideInferer("out/", mpp=0.5).predict_slides([d["image"] for d in data], net)

The bundle ``recipes/wsi_tumor_classification`` does all of this from configs.

.. versionadded:: 0.1
"""

from .inferers import (
    CSV_FIELDS,
    RegionNormalize,
    SlidePrediction,
    SlideStreamingInferer,
    WholeSlideInferer,
    network_fingerprint,
)
from .networks import CheckpointError, XTNet, load_checkpoint, read_checkpoint, save_checkpoint
from .training import GradientAllReduce, prepare_slide_batch
from .wsi import (
    NestedRegionWSIDataset,
    NoTissueError,
    SlideTooSmallError,
    TissueMask,
    open_slide,
    read_slide_data,
    region_tissue_fraction,
    slide_collate,
    slide_region_mask,
    tissue_mask,
)

__all__ = [
    "CSV_FIELDS",
    "CheckpointError",
    "GradientAllReduce",
    "NestedRegionWSIDataset",
    "NoTissueError",
    "RegionNormalize",
    "SlidePrediction",
    "SlideStreamingInferer",
    "SlideTooSmallError",
    "TissueMask",
    "WholeSlideInferer",
    "XTNet",
    "load_checkpoint",
    "network_fingerprint",
    "open_slide",
    "prepare_slide_batch",
    "read_checkpoint",
    "read_slide_data",
    "region_tissue_fraction",
    "save_checkpoint",
    "slide_collate",
    "slide_region_mask",
    "tissue_mask",
]
