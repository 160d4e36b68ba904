"""MONAI inferers over whole slides: streamed slide logits for training, files for inference.

- :class:`SlideStreamingInferer` gives slide logits *with gradients* at bounded memory
  (:func:`xt_plugins.stream_forward`: regions read lazily inside checkpointed chunks); it is the
  ``inferer`` of a MONAI ``SupervisedTrainer`` / ``SupervisedEvaluator`` over slide items.
- :class:`WholeSlideInferer` streams every tissue region of a slide through the model with the
  inference engine (:func:`xt_plugins.stream_predict`, its run store and runner) and writes a
  region probability map (Zarr, with an OME-Zarr ``map`` in microns), a PNG heatmap over the
  slide thumbnail, QuPath tiles of regions in level-0 pixels and a CSV row per slide.

.. versionadded:: 0.1
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from monai.inferers import Inferer
from torch import Tensor

from ..infer import stream_predict
from ..infer.identity import describe, weights_digest
from ..infer.runner import InputItem, PredictionTable, output_names, run_inputs
from ..io import SlideSource
from ..io.masks import slide_region_mask, tissue_mask
from ..nn.xt import XTModel
from .slide_outputs import (
    CSV_FIELDS,
    SlidePrediction,
    class_names,
    slide_item,
    write_slide_attrs,
    write_slide_files,
)
from .training import RegionNormalize, SlideStreamingInferer, _unwrap
from .wsi import open_slide

logger = logging.getLogger(__name__)

__all__ = [
    "CSV_FIELDS",
    "RegionNormalize",
    "SlidePrediction",
    "SlideStreamingInferer",
    "WholeSlideInferer",
    "network_fingerprint",
]

#: A short hash of a network's weights (the run store's weights identity).
network_fingerprint = weights_digest


# ---------------------------------------------------------------------------- inference
@dataclass(eq=False)
class WholeSlideInferer(Inferer):
    """Predict whole slides region by region and write heatmaps, GeoJSON and a prediction CSV.

    For each slide ``<name>`` (its stem; same-named slides of different folders get their
    folders' names, see :func:`xt_plugins.infer.runner.output_names`) it writes into
    ``output_dir``:

    - ``<stem>.zarr``: ``probs`` (num_classes, rows, cols) region probabilities (NaN off
      tissue), ``tissue`` (rows, cols) tissue fractions and ``map``, the same probabilities as
      an OME-Zarr image in microns (napari, ``ome-zarr``); attributes record the geometry
      (``region_size``, ``scale`` = level-0 px per pixel, ``mpp``) and the slide logits.
    - ``<stem>_heatmap.png``: the positive-class probability over the slide thumbnail.
    - ``<stem>.geojson``: QuPath tiles in level-0 pixels (positive regions, or every tissue
      region with ``geojson="tissue"``; :mod:`~xt_plugins.monai.slide_outputs`).

    :meth:`predict_slides` updates one CSV row per slide (keyed by its absolute path); a failing
    slide is one error line naming it. Each slide's Zarr is a run store
    (:class:`xt_plugins.infer.RunStore`): resumed or reused only for the same file, weights
    and settings; a damaged store is recomputed.

    Args:
        output_dir: folder for the outputs (None: compute only, write nothing).
        mpp: microns per pixel the model works at.
        slide_mpp: level-0 mpp for slides that do not record it.
        min_tissue: a region is predicted when its tissue fraction is at least this.
        region_batch: regions encoded together.
        positive_class: the class shown in heatmaps and GeoJSON.
        threshold: positive-class probability from which a region is positive (GeoJSON).
        class_names: names of the classes (GeoJSON classification); default ``class_<k>``,
            with ``tumor`` for class 1 of two.
        transform: applied to each region batch (default: ImageNet normalisation).
        thumbnail_size: longest side of the thumbnail (tissue mask and heatmap background).
        tissue_kwargs: more options of :func:`~xt_plugins.monai.tissue_mask`.
        resume: continue interrupted slides and reuse finished ones of the same slide, weights
            and settings (False: recompute).
        keep_tokens: keep the per-region encoder tokens in the Zarr (large; they are only needed
            while a slide is in progress).
        progress: show progress bars (slides, and regions per slide).
        read_workers: reader threads per slide.
        geojson: ``"positive"`` (positive regions) or ``"tissue"`` (every tissue region).
        precision: ``"32"``, ``"bf16"`` or ``"16"`` (CUDA) autocast of the region encoder.
        tta: None or ``"flips"`` (region batches averaged over four flips, 4x compute).

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
       ``geojson``, ``precision``, ``tta``; QuPath tiles and the OME-Zarr ``map``.
    """

    output_dir: str | os.PathLike[str] | None = None
    _: KW_ONLY
    mpp: float = 0.5
    slide_mpp: float | None = None
    min_tissue: float = 0.1
    region_batch: int = 16
    positive_class: int = 1
    threshold: float = 0.5
    class_names: Sequence[str] | None = None
    transform: Callable[[Tensor], Tensor] | None = None
    thumbnail_size: int = 2048
    tissue_kwargs: Mapping[str, Any] | None = None
    resume: bool = True
    keep_tokens: bool = False
    progress: bool = True
    read_workers: int = 1
    geojson: str = "positive"
    precision: str = "32"
    tta: str | None = None

    def __post_init__(self) -> None:
        super().__init__()
        self.output_dir = None if self.output_dir is None else Path(self.output_dir)
        self.class_names = None if self.class_names is None else list(self.class_names)
        self.transform = self.transform if self.transform is not None else RegionNormalize()
        self.tissue_kwargs = dict(self.tissue_kwargs or {})

    # ------------------------------------------------------------------------ MONAI API
    def __call__(self, inputs: Any, network: Any, *args: Any, **kwargs: Any) -> Tensor:
        """Predict one slide or a list of slides; returns (B, num_classes) slide logits.

        ``inputs``: slide paths, :class:`~xt_plugins.io.SlideSource` objects or dict items with
        ``"image"``. Files are written as for :meth:`predict_slide`; errors are raised.
        """
        items = inputs if isinstance(inputs, list | tuple) else [inputs]
        preds = [self.predict_slide(item, network) for item in items]
        return torch.tensor([p.logits for p in preds], dtype=torch.float32)

    # ------------------------------------------------------------------------ many slides
    def predict_slides(
        self,
        slides: Sequence[Any],
        network: Any,
        *,
        csv_path: str | os.PathLike[str] | None = None,
        on_error: Callable[[SlidePrediction], None] | None = None,
    ) -> list[SlidePrediction]:
        """Predict each slide; a failing slide is reported and the others go on.

        Args:
            slides: paths, sources, dict items (``{"image": path, "label": ...}``) or
                :class:`~xt_plugins.infer.runner.InputItem` s.
            network: the model.
            csv_path: prediction CSV (default ``output_dir/predictions.csv``), rows by slide.
            on_error: called with each failed prediction (default: log one error line).

        Returns:
            One :class:`SlidePrediction` per slide, in input order.
        """
        items = [s if isinstance(s, InputItem) else slide_item(s) for s in slides]
        unnamed = [i for i in items if not i.name]
        for item, name in zip(unnamed, output_names([i.path for i in unnamed]), strict=True):
            item.name = name
        if csv_path is None and self.output_dir is not None:
            csv_path = self.output_dir / "predictions.csv"
        table = None if csv_path is None else PredictionTable(csv_path, CSV_FIELDS)
        report = on_error or (lambda p: logger.error("%s", p.error))
        preds: dict[int, SlidePrediction] = {}

        def pred_of(outcome: Any) -> SlidePrediction:
            if id(outcome) not in preds:
                if outcome.ok:
                    preds[id(outcome)] = outcome.result
                else:
                    item = outcome.item
                    pred = SlidePrediction(item.path.name, item.key, "error", label=item.label)
                    pred.error = outcome.error
                    preds[id(outcome)] = pred
                    report(pred)
            return preds[id(outcome)]

        def predict(item: InputItem) -> SlidePrediction:
            return self.predict_slide(item, network)

        outcomes = run_inputs(
            items,
            predict,
            row=lambda o: pred_of(o).csv_row(),
            table=table,
            report=pred_of,
            progress=self.progress,
            what="slide",
        )
        return [pred_of(o) for o in outcomes]

    # ------------------------------------------------------------------------ one slide
    def predict_slide(self, slide: Any, network: Any) -> SlidePrediction:
        """Predict one slide and write its outputs.

        Args:
            slide: a path, a :class:`~xt_plugins.io.SlideSource` (already at the model's
                resolution), a dict item with ``"image"`` (and ``"label"``), or an
                :class:`~xt_plugins.infer.runner.InputItem`.
            network: the model (an XTNet / XTModel, or a wrapper of one).

        Returns:
            The :class:`SlidePrediction`.

        Raises:
            Exception: whatever fails, with the slide's path in the message (slide cannot be
                opened or read, no mpp, too small, no tissue, ...).
        """
        start = time.perf_counter()
        net = _unwrap(network)
        item = slide if isinstance(slide, InputItem) else slide_item(slide)
        source = item.extra.get("source")
        opened = source is None
        if opened:
            source = open_slide(item.path, mpp=self.mpp, slide_mpp=self.slide_mpp)
        try:
            pred = SlidePrediction(item.path.name, item.key, label=item.label)
            name = item.name or item.path.stem
            zpath = None if self.output_dir is None else self.output_dir / f"{name}.zarr"
            if zpath is not None and not self.resume and zpath.exists():
                shutil.rmtree(zpath)
            probs, fractions, logits, tissue, pred.resumed = self._predict(net, source, zpath)
            pred.summarize(probs, logits, self.positive_class, self.threshold)
            if self.output_dir is not None:

                def thumbnail() -> Any:  # the tissue mask's thumbnail: the heatmap background
                    kw = self.tissue_kwargs
                    return tissue or tissue_mask(source, max_side=self.thumbnail_size, **kw)

                pred.heatmap, pred.geojson = write_slide_files(
                    self.output_dir / name, probs, fractions, thumbnail, source, net.region_size,
                    class_names(self.class_names, probs.shape[0]), self.positive_class,
                    self.threshold, self.geojson, reuse=pred.resumed,
                )  # fmt: skip
                pred.zarr = str(zpath)
        finally:
            if opened:
                source.close()
        pred.seconds = time.perf_counter() - start
        return pred

    def _predict(self, net: XTModel, source: SlideSource, zpath: Path | None) -> tuple:
        """Stream the tissue regions: (probs (C, rows, cols), fractions, logits, tissue, resumed).

        The tissue mask is computed only when regions must be encoded (a finished store of
        the same slide, weights and settings answers without it).
        """
        found: dict[str, Any] = {}

        def region_mask() -> np.ndarray:
            mask, found["fractions"], found["tissue"] = slide_region_mask(
                source, net.region_size, min_tissue=self.min_tissue,
                max_side=self.thumbnail_size, **self.tissue_kwargs,
            )  # fmt: skip
            return mask

        # what the stored outputs depend on besides the file and weights (and precision / tta)
        settings = {"mpp": source.mpp, "slide_mpp": source.slide_mpp, "level": source.level,
                    "min_tissue": self.min_tissue, "transform": describe(self.transform),
                    "tissue": {"max_side": self.thumbnail_size, **self.tissue_kwargs}}  # fmt: skip
        result = stream_predict(net, source, region_batch=self.region_batch, out=zpath,
                                progress=self.progress, resume=True, transform=self.transform,
                                region_mask=region_mask, read_workers=self.read_workers,
                                settings=settings, keep_tokens=self.keep_tokens,
                                precision=self.precision, tta=self.tta)  # fmt: skip
        grid = result.grid
        probs = result.region_outputs.T.reshape(-1, grid.rows, grid.cols).numpy()
        group = None if zpath is None else zarr.open_group(str(zpath), mode="r+")
        stored = group is not None and "tissue" in group and result.resumed
        if "fractions" not in found and stored:
            found["fractions"] = np.asarray(group["tissue"][:])
        if "fractions" not in found:  # nothing stored to answer from: recompute (cheap)
            region_mask()
            stored = False
        if group is not None and (not stored or "map" not in group):
            names = class_names(self.class_names, len(result.logits))
            write_slide_attrs(group, found["fractions"], result.logits, source, net.region_size,
                              names, probs)  # fmt: skip
        return probs, found["fractions"], result.logits, found.get("tissue"), result.resumed
