"""Slides at a target mpp, tissue masks and the nested-region dataset on generated slides."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import DataLoader
from PIL import Image

from xt_plugins.io import MissingMPPError, SlideSource
from xt_plugins.monai import (
    NestedRegionWSIDataset,
    NoTissueError,
    SlideTooSmallError,
    open_slide,
    read_slide_data,
    region_tissue_fraction,
    slide_collate,
    slide_region_mask,
    tissue_mask,
)

from .conftest import MPP, REGION, THUMB, fixture_file, region_means


def test_open_slide_picks_the_level_for_the_mpp(slides, bad_slides):
    folder, infos = slides
    path = infos[0].path
    fine = open_slide(path, mpp=0.5)
    assert fine.level == 0 and fine.shape == (3, 1500, 2000) and fine.scale == 1
    coarse = open_slide(path, mpp=1.0)
    assert coarse.level == 1 and coarse.shape == (3, 750, 1000) and coarse.scale == 2
    between = open_slide(path, mpp=0.8)  # no such level: level 0 resized
    assert between.level == 0 and between.resized and between.shape == (3, 938, 1250)
    with pytest.raises(MissingMPPError, match="no_mpp.tiff.*slide_mpp"):
        open_slide(bad_slides["no_mpp"], mpp=MPP)
    assert open_slide(bad_slides["no_mpp"], mpp=1.0, slide_mpp=0.5).shape == (3, 750, 1000)
    with pytest.raises(ValueError, match=r"boxes.tiff.*352.8 um/px.*coarser"):
        open_slide(fixture_file("boxes.tiff"), mpp=0.5)


def test_tissue_mask_finds_the_generated_tissue(slides, bad_slides):
    _, infos = slides
    info = infos[1]
    src = open_slide(info.path, mpp=MPP)
    tissue = tissue_mask(src, max_side=THUMB)
    assert tissue.mask.shape == tissue.thumbnail.shape[:2] == (384, 512)
    assert tissue.downsample == pytest.approx((1500 / 384, 2000 / 512))
    truth = info.tissue_mask  # ground truth at layout resolution
    ours = np.asarray(Image.fromarray(tissue.mask).resize(truth.shape[::-1], Image.NEAREST))
    iou = (ours & truth).sum() / (ours | truth).sum()
    assert iou > 0.8, iou
    fractions = region_tissue_fraction(tissue, src, REGION)
    assert fractions.shape == (12, 16)  # ceil(750 / 64), ceil(1000 / 64)
    assert 0 <= fractions.min() and fractions.max() <= 1
    # per-region fractions agree with the ground truth averaged over the same regions
    step = REGION * src.scale / info.mask_downsample  # mask pixels per region
    expected = region_means(truth, step, 12, 16)
    assert np.abs(fractions - expected).mean() < 0.05
    blank = open_slide(bad_slides["blank"], mpp=MPP)
    assert not tissue_mask(blank, max_side=THUMB).mask.any()
    with pytest.raises(NoTissueError, match="blank.tiff: no tissue"):
        slide_region_mask(blank, REGION, max_side=THUMB)
    with pytest.raises(SlideTooSmallError, match="small.svs.*smaller than one 64-px region"):
        slide_region_mask(open_slide(fixture_file("small.svs"), mpp=0.5), REGION)


def test_read_slide_data_uses_labels_csv(slides):
    folder, infos = slides
    data = read_slide_data(folder, require_labels=True)
    assert [d["label"] for d in data] == [i.label for i in infos] == [0, 1, 0, 1]
    assert [d["image"] for d in data] == [str(i.path) for i in infos]
    bare = read_slide_data([infos[0].path])
    assert bare == [{"image": str(infos[0].path)}]
    with pytest.raises(ValueError, match="no label"):
        read_slide_data([infos[0].path], require_labels=True)


def test_window_mode_reads_tissue_windows_with_level0_metadata(slides):
    folder, infos = slides
    data = read_slide_data(folder)[:2]
    ds = NestedRegionWSIDataset(
        data,
        mode="window",
        mpp=MPP,
        region_size=REGION,
        window_regions=2,
        min_tissue=0.3,
        tissue_kwargs={"max_side": THUMB},
    )
    assert len(ds) > 4
    masks = ds.region_masks()
    assert [m.shape for m in masks] == [(12, 16), (12, 16)]
    item = ds[len(ds) - 1]
    image = item["image"]
    assert image.shape == (3, 128, 128) and image.dtype == torch.uint8
    assert item["label"] == 1 and item["path"] == str(infos[1].path)
    assert item["tissue"] >= 0.3
    row, col = item["grid"].tolist()
    y0, x0 = item["location"].tolist()
    assert (y0, x0) == (row * REGION * 2, col * REGION * 2)  # level-0 px at 2 level-0 px / px
    assert item["size"].tolist() == [256, 256]
    assert image.meta["location"] == [y0, x0] and image.meta["level"] == 1
    with SlideSource(infos[1].path, level=1) as level1:  # the same pixels, read directly
        np.testing.assert_array_equal(image.numpy(), level1.read(y0 // 2, x0 // 2, 128, 128))
    assert all(t >= 0.3 for *_, t in ds.index)
    loader = DataLoader(ds, batch_size=3, shuffle=False, num_workers=0)
    batch = next(iter(loader))
    assert batch["image"].shape == (3, 3, 128, 128) and batch["label"].shape == (3,)
    assert batch["location"].shape == (3, 2)


def test_region_mode_yields_every_tissue_region_in_scan_order(slides):
    folder, _ = slides
    data = read_slide_data(folder)[:2]
    ds = NestedRegionWSIDataset(
        data, mode="region", mpp=MPP, region_size=REGION, tissue_kwargs={"max_side": THUMB}
    )
    masks = ds.region_masks()
    assert len(ds) == sum(int(m.sum()) for m in masks)
    grids = [(s, r, c) for s, r, c, _ in ds.index]
    assert grids == sorted(grids)  # slide by slide, row-major
    first = ds[0]
    assert first["image"].shape == (3, REGION, REGION)
    assert masks[0][tuple(first["grid"].tolist())]


def test_slide_mode_items_and_bad_slides_skipped_with_their_name(slides, bad_slides):
    folder, infos = slides
    data = read_slide_data(folder)[:2] + [
        {"image": str(bad_slides["blank"]), "label": 0},
        {"image": str(fixture_file("unopenable.tiff")), "label": 1},
    ]
    with pytest.warns(UserWarning) as record:
        ds = NestedRegionWSIDataset(
            data, mode="slide", mpp=MPP, region_size=REGION, tissue_kwargs={"max_side": THUMB}
        )
    messages = " ".join(str(w.message) for w in record)
    assert "blank.tiff: no tissue" in messages and "Unsupported TIFF compression" in messages
    assert len(ds) == 2 and set(ds.failed) == {data[2]["image"], data[3]["image"]}
    item = ds[1]
    assert isinstance(item["image"], SlideSource) and item["image"].shape == (3, 750, 1000)
    assert item["region_mask"].shape == (12, 16) and item["region_mask"].dtype == torch.bool
    batch = next(iter(DataLoader(ds, batch_size=2, collate_fn=slide_collate)))
    assert [b["path"] for b in batch] == [str(i.path) for i in infos[:2]]
    with pytest.raises(ValueError, match="no usable slide"), pytest.warns(UserWarning):
        NestedRegionWSIDataset(data[2:], mode="slide", mpp=MPP, region_size=REGION)
