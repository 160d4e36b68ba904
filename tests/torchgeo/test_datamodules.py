"""SAR scenes: bad input, pixel-exact windows, normalisation, targets from labels, splits."""

import shutil

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch

from xt_plugins.io import ImageReadError, write_geotiff
from xt_plugins.torchgeo.datamodules import (
    BAND_STATS,
    SARScene,
    SARSceneDataModule,
    SARSceneDataset,
    SARSceneError,
    find_scenes,
    split_scenes,
)
from xt_plugins.torchgeo.samplers import NestedRegionGeoSampler


def _read(path):
    with rasterio.open(path) as src:
        return src.read(), src.profile


def _geoslice(scene, y, x, h, w):
    left, _, _, top = scene.bounds
    rx, ry = scene.res
    xs = slice(left + x * rx, left + (x + w) * rx, rx)
    return xs, slice(top - (y + h) * ry, top - y * ry, ry)


# ---------------------------------------------------------------------------- bad input
def test_wrong_band_count(scene_copy):
    vv, prof = _read(scene_copy / "VV_dB.tif")
    write_geotiff(
        scene_copy / "VV_dB.tif",
        np.concatenate([vv, vv]),
        prof["crs"],
        prof["transform"],
        prof["nodata"],
    )
    with pytest.raises(SARSceneError, match=r"VV_dB\.tif: expected 1 band \(VV\), found 2"):
        SARScene(scene_copy)


def test_missing_vh(scene_copy):
    (scene_copy / "VH_dB.tif").unlink()
    with pytest.raises(SARSceneError, match=r"VH_dB\.tif: missing VH file"):
        SARScene(scene_copy)


def test_grids_disagree(scene_copy):
    vh, prof = _read(scene_copy / "VH_dB.tif")
    shifted = prof["transform"] @ rasterio.Affine.translation(3, 0)
    write_geotiff(scene_copy / "VH_dB.tif", vh, prof["crs"], shifted, prof["nodata"])
    with pytest.raises(
        SARSceneError,
        match=r"VH_dB\.tif: its grid disagrees with VV_dB\.tif "
        r"\(transform",
    ):
        SARScene(scene_copy)
    write_geotiff(
        scene_copy / "VH_dB.tif", vh[:, :-10], prof["crs"], prof["transform"], prof["nodata"]
    )
    with pytest.raises(SARSceneError, match=r"VH_dB\.tif.*size 600 x 490 px vs 600 x 500 px"):
        SARScene(scene_copy)


def test_all_nodata_scene(scene_copy):
    for band in ("VV", "VH"):
        data, prof = _read(scene_copy / f"{band}_dB.tif")
        write_geotiff(
            scene_copy / f"{band}_dB.tif",
            np.full_like(data, -9999.0),
            prof["crs"],
            prof["transform"],
            prof["nodata"],
        )
    with pytest.raises(SARSceneError, match=r"VV_dB\.tif: every pixel is nodata \(-9999"):
        SARScene(scene_copy)


def test_corrupt_geotiff(scene_copy, fixtures_dir):
    shutil.copy(fixtures_dir / "rasterio" / "corrupt.tif", scene_copy / "VV_dB.tif")
    with pytest.raises(ImageReadError, match=r"VV_dB\.tif: .*failed.*(IReadBlock|TIFFRead)"):
        SARScene(scene_copy)


def test_missing_labels_and_no_scenes(scene_copy, tmp_path):
    (scene_copy / "detections.csv").unlink()
    assert SARScene(scene_copy).height == 500  # images alone are fine
    with pytest.raises(SARSceneError, match=r"detections\.csv: no such file"):
        SARSceneDataset([scene_copy], task="detection")
    SARSceneDataset([scene_copy], task="none")
    with pytest.raises(FileNotFoundError, match="make-sar-scenes"):
        find_scenes(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no scene folders"):
        find_scenes(tmp_path / "empty")


# ---------------------------------------------------------------------------- reading
def test_window_is_pixel_exact_and_normalised(sar_root):
    scene = SARScene(sar_root / "scene_000")
    raw_vv, _ = _read(scene.files["VV"])
    raw_vh, _ = _read(scene.files["VH"])
    ds = SARSceneDataset([scene], task="none")
    y, x, h, w = 64, 128, 128, 192
    sample = ds[(*_geoslice(scene, y, x, h, w),)]
    img, valid = sample["image"].numpy(), sample["valid"][0].numpy() > 0
    vv, vh = raw_vv[0, y : y + h, x : x + w], raw_vh[0, y : y + h, x : x + w]
    expect_valid = (vv != -9999) & (vh != -9999)
    assert img.shape == (2, h, w) and np.array_equal(valid, expect_valid)
    mean, std = BAND_STATS["VV"]
    assert np.allclose(img[0][valid], np.clip((vv[valid] - mean) / std, -10, 10), atol=1e-5)
    assert (img[:, ~valid] == 0).all()
    t = sample["transform"].numpy()
    left, _, _, top = scene.bounds
    assert t[0] == 10.0 and t[2] == left + x * 10.0 and t[5] == top - y * 10.0


def test_scene_with_nodata_reads_zero_and_mask(sar_root):
    scene = SARScene(sar_root / "scene_000")
    mask, _ = scene.validity()
    assert 0 < mask.mean() < 1  # the generator writes a nodata corner / stripes
    img, valid = scene.read_with_mask(-10, -10, 20, 20)  # hangs over the top-left corner
    assert not valid[:10].any() and (img[:, :10] == 0).all()


# ---------------------------------------------------------------------------- targets
def _an_object(scene):
    d = scene.detections
    row = d[
        (d.is_vessel > 0.5)
        & (d.detect_scene_row > 64)
        & (d.detect_scene_row < 430)
        & (d.detect_scene_column > 64)
        & (d.detect_scene_column < 530)
    ].iloc[0]
    return row, int(row.detect_scene_row), int(row.detect_scene_column)


def test_detection_targets_hold_the_labels(sar_root):
    scene = SARScene(sar_root / "scene_000")
    row, r, c = _an_object(scene)
    y, x = r - 60, c - 37  # any window around the object
    ds = SARSceneDataset([scene], task="detection", target_stride=4)
    s = ds[(*_geoslice(scene, y, x, 128, 128),)]
    cell = ((r - y) // 4, (c - x) // 4)
    assert s["heatmap"].shape == (1, 32, 32) and s["heatmap"][0][cell] == 1.0
    centres = torch.nonzero(s["heatmap"][0] == 1.0).tolist()
    inside = scene.objects_in(y, x, 128, 128)
    assert len(centres) == len(inside)
    assert s["vessel"][cell] == 1.0
    assert s["fishing"][cell] == float(row.is_fishing)
    assert s["length"][cell] == pytest.approx(row.vessel_length_m)
    assert s["shore"][cell] == pytest.approx(row.distance_from_shore_km)
    others = torch.ones(32, 32, dtype=torch.bool)
    for rr, cc in centres:
        others[rr, cc] = False
    assert (s["vessel"][others] == -1).all() and (s["length"][others] == -1).all()


def test_classification_and_segmentation_targets(sar_root):
    scene = SARScene(sar_root / "scene_000")
    _, r, c = _an_object(scene)
    y, x = (r // 64) * 64, (c // 64) * 64
    cls = SARSceneDataset([scene], task="classification")
    seg = SARSceneDataset([scene], task="segmentation")
    assert int(cls[(*_geoslice(scene, y, x, 64, 64),)]["label"]) == 1
    mask = seg[(*_geoslice(scene, y, x, 64, 64),)]["mask"]
    assert mask.dtype == torch.long and mask[r - y, c - x] == 1
    # an empty window far from objects
    d = scene.detections
    for yy in range(0, 500 - 64, 64):
        for xx in range(0, 600 - 64, 64):
            if scene.objects_in(yy, xx, 64, 64).empty:
                assert int(cls[(*_geoslice(scene, yy, xx, 64, 64),)]["label"]) == 0
                assert seg[(*_geoslice(scene, yy, xx, 64, 64),)]["mask"].sum() == 0
                return
    pytest.fail(f"no empty window among {len(d)} objects")


def test_time_slices_keep_overlapping_scenes_apart(sar_root):
    ds = SARSceneDataset([sar_root / "scene_000", sar_root / "scene_001"], task="none")
    assert len(ds.index) == 2 and not ds.index.index.is_overlapping
    sampler = NestedRegionGeoSampler(
        ds, 128, 64, toi=pd.Interval(ds.index.index[1].left, ds.index.index[1].right)
    )
    assert {w.index for w in sampler.windows} == {1}
    scene1 = ds.scenes[1]
    raw, _ = _read(scene1.files["VV"])
    w = sampler.windows[0]
    img = ds[w.geoslice]["image"][0].numpy()
    vv = raw[0, w.row : w.row + 128, w.col : w.col + 128]
    ok = vv != -9999
    assert np.allclose(img[ok], np.clip((vv[ok] + 18) / 6, -10, 10), atol=1e-5)


# ---------------------------------------------------------------------------- datamodule
def test_split_by_scene():
    names = [f"s{i}" for i in range(8)]
    s = split_scenes(names, 0.25, 0.125)
    assert s == {"train": names[:5], "val": names[5:7], "test": names[7:]}
    s = split_scenes(names[:2], 0.25, 0.0)
    assert s["train"] == ["s0"] and s["val"] == ["s1"] and s["test"] == ["s1"]
    with pytest.warns(UserWarning, match="only one scene"):
        assert split_scenes(names[:1], 0.25, 0.25)["val"] == ["s0"]


@pytest.mark.parametrize("task", ["detection", "classification", "segmentation"])
def test_datamodule_batches(sar_root, task):
    dm = SARSceneDataModule(str(sar_root), task=task, window_px=128, region_px=64, batch_size=2)
    dm.setup("fit")
    assert [s.path.name for s in dm.train_dataset.scenes] == ["scene_000"]
    assert [s.path.name for s in dm.val_dataset.scenes] == ["scene_001"]
    batch = next(iter(dm.train_dataloader()))
    batch = dm.on_after_batch_transfer(batch, 0)  # identity (normalised in the dataset)
    assert batch["image"].shape == (2, 2, 128, 128) and batch["valid"].shape == (2, 1, 128, 128)
    key = {"detection": "heatmap", "classification": "label", "segmentation": "mask"}[task]
    shape = {"detection": (2, 1, 32, 32), "classification": (2,), "segmentation": (2, 128, 128)}
    assert tuple(batch[key].shape) == shape[task]
    assert len(dm.val_dataloader()) == -(-len(dm.val_sampler) // 2) > 0
    dm.teardown("fit")


def test_datamodule_explicit_scenes_and_errors(sar_root):
    dm = SARSceneDataModule(
        str(sar_root),
        window_px=128,
        region_px=64,
        train_scenes=["scene_001"],
        val_scenes=["scene_000"],
    )
    dm.setup("validate")
    assert [s.name for s in dm.val_dataset.scenes] == ["scene_000"]
    with pytest.raises(FileNotFoundError, match=r"scene_009.*scene_000"):
        SARSceneDataModule(
            str(sar_root), window_px=128, region_px=64, val_scenes=["scene_009"]
        ).setup("validate")
    with pytest.raises(ValueError, match="multiple of region_px"):
        SARSceneDataModule(str(sar_root), window_px=100, region_px=64)


def test_plot_shows_image_and_target(sar_root):
    import matplotlib

    matplotlib.use("Agg")
    ds = SARSceneDataset([sar_root / "scene_000"], task="segmentation")
    sample = ds[(*_geoslice(ds.scenes[0], 0, 0, 64, 64),)]
    fig = ds.plot(sample, suptitle="scene_000")
    assert [ax.get_title() for ax in fig.axes] == ["VV (normalised)", "mask"]


def test_extra_band(sar_root, scene_copy):
    scene = SARScene(sar_root / "scene_000", bands=("VV", "VH", "bathymetry"))
    img, _ = scene.read_with_mask(0, 0, 32, 32)
    raw, _ = _read(scene.files["bathymetry"])
    mean, std = BAND_STATS["bathymetry"]
    assert img.shape == (3, 32, 32)
    ok = img[0] != 0
    assert np.allclose(img[2][ok], np.clip((raw[0, :32, :32][ok] - mean) / std, -10, 10))
    shutil.copy(scene_copy / "VV_dB.tif", scene_copy / "HH_dB.tif")
    with pytest.raises(SARSceneError, match=r"no normalisation for band\(s\) \['HH'\]"):
        SARScene(scene_copy, bands=("VV", "HH"))
