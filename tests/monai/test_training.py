"""Slide-level training end to end through MONAI's SupervisedTrainer at bounded memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from ignite.engine import Events
from monai.data import DataLoader
from monai.engines import SupervisedTrainer

import xt_plugins
from xt_plugins.monai import (
    GradientAllReduce,
    NestedRegionWSIDataset,
    RegionNormalize,
    SlideStreamingInferer,
    WholeSlideInferer,
    prepare_slide_batch,
    read_slide_data,
    slide_collate,
)

from .conftest import MPP, REGION, THUMB, region_means, tiny_xtnet


def slide_dataset(folder) -> NestedRegionWSIDataset:
    return NestedRegionWSIDataset(
        read_slide_data(folder, require_labels=True),
        mode="slide",
        mpp=MPP,
        region_size=REGION,
        tissue_kwargs={"max_side": THUMB},
    )


def test_supervised_trainer_trains_the_region_encoder_end_to_end(slides):
    folder, _ = slides
    ds = slide_dataset(folder)
    net = tiny_xtnet(region_chunk=8, checkpoint_regions=True, grad_ratio=0.5)
    encoder_before = {k: v.clone() for k, v in net.region_encoder.state_dict().items()}
    context_before = {k: v.clone() for k, v in net.context.state_dict().items()}
    losses = []
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=DataLoader(ds, batch_size=2, collate_fn=slide_collate, shuffle=True),
        network=net,
        optimizer=torch.optim.AdamW(net.parameters(), lr=1e-3),
        loss_function=torch.nn.CrossEntropyLoss(),
        inferer=SlideStreamingInferer(),
        prepare_batch=prepare_slide_batch,
        train_handlers=[GradientAllReduce(net)],  # no process group: does nothing
        decollate=False,
    )
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"].item())
    )
    trainer.run()
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert trainer.state.output["pred"].shape == (2, 2)
    moved = [
        k
        for k, v in net.region_encoder.state_dict().items()
        if v.is_floating_point() and not torch.equal(v, encoder_before[k])
    ]
    stems = [k for k in moved if "stem" in k]  # the first layer: gradients went all the way
    assert stems and len(moved) > len(encoder_before) // 2
    assert any(not torch.equal(v, context_before[k]) for k, v in net.context.state_dict().items())


def test_streaming_inferer_matches_the_whole_slide_inferer_and_has_gradients(slides):
    folder, _ = slides
    item = slide_dataset(folder)[1]
    net = tiny_xtnet(region_chunk=16, checkpoint_regions=True).eval()
    inferer = SlideStreamingInferer()
    logits = inferer([item], net)
    assert logits.shape == (1, 2) and logits.requires_grad
    logits.sum().backward()
    stem = net.region_encoder.backbone.stem_0.weight
    assert stem.grad is not None and stem.grad.abs().sum() > 0
    with torch.no_grad():
        streamed = xt_plugins.stream_predict(
            net,
            item["image"],
            transform=RegionNormalize(),
            region_mask=item["region_mask"],
            progress=False,
        )
    torch.testing.assert_close(streamed.logits, logits[0].detach(), rtol=1e-4, atol=1e-4)


def test_prepare_slide_batch_stacks_labels():
    items, labels = prepare_slide_batch([{"label": torch.tensor(1)}, {"label": 0}], "cpu")
    assert labels.tolist() == [1, 0] and labels.dtype == torch.long and len(items) == 2


@pytest.mark.slow
def test_short_slide_level_training_puts_the_heatmap_on_the_tumor(tmp_path, slides):
    """Slide labels only; after ~100 steps the region map is higher on the generated tumor."""
    folder, infos = slides
    ds = slide_dataset(folder)
    net = tiny_xtnet(context="none", region_chunk=32)  # region outputs stay local
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=25,
        train_data_loader=DataLoader(ds, batch_size=1, collate_fn=slide_collate),
        network=net,
        optimizer=torch.optim.AdamW(net.parameters(), lr=1e-3),
        loss_function=torch.nn.CrossEntropyLoss(),
        inferer=SlideStreamingInferer(),
        prepare_batch=prepare_slide_batch,
        decollate=False,
    )
    trainer.run()
    inferer = WholeSlideInferer(tmp_path, mpp=MPP, thumbnail_size=THUMB, progress=False)
    for info in infos:
        if not info.label:
            continue
        inferer.predict_slide(str(info.path), net)
        probs = zarr.open_group(str(tmp_path / f"{info.path.stem}.zarr"), mode="r")["probs"][1]
        step = REGION * 2 / info.mask_downsample  # mask pixels per region (2 level-0 px / px)
        tumor = region_means(info.tumor_mask, step, *probs.shape)
        on = np.isfinite(probs)
        assert (on & (tumor > 0.5)).sum() >= 3
        in_tumor = probs[on & (tumor > 0.5)].mean()
        in_normal = probs[on & (tumor == 0)].mean()
        assert in_tumor > in_normal + 0.15, (in_tumor, in_normal)
