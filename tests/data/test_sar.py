"""Synthetic xView3-style SAR scenes: GeoTIFF grid, labels, content, determinism, TorchGeo."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import rasterio
from scipy import ndimage

from xt_plugins.data import make_sar_scene, make_sar_scenes
from xt_plugins.data.sar import DETECTION_COLUMNS, NODATA

XVIEW3_COLUMNS = [
    "detect_scene_row",
    "detect_scene_column",
    "is_vessel",
    "is_fishing",
    "vessel_length_m",
    "distance_from_shore_km",
]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 1500 x 1200 (rows x cols) scene with bathymetry, 512-px windows."""
    out = tmp_path_factory.mktemp("sar") / "scene"
    return make_sar_scene(out, 1500, 1200, seed=3, tile=512, workers=1)


def _read(path):
    with rasterio.open(path) as src:
        return src.read(1), src.profile


def test_bands_share_one_grid(scene):
    profiles = []
    for name in ("VV_dB.tif", "VH_dB.tif", "bathymetry.tif"):
        with rasterio.open(scene.dir / name) as src:
            assert src.dtypes == ("float32",)
            assert src.nodata == NODATA
            assert src.profile["tiled"]
            profiles.append((src.crs, src.transform, src.height, src.width))
    assert len(set(profiles)) == 1
    crs, transform, height, width = profiles[0]
    assert crs.to_string() == scene.crs == "EPSG:32631"
    assert (height, width) == (1500, 1200) and transform == scene.transform
    assert transform.a == 10.0 and transform.e == -10.0


def test_nodata_stripes_and_corner(scene):
    vv, _ = _read(scene.dir / "VV_dB.tif")
    vh, _ = _read(scene.dir / "VH_dB.tif")
    nodata = vv == NODATA
    assert np.array_equal(nodata, vh == NODATA)
    assert 0.005 < nodata.mean() < 0.3
    assert nodata.all(axis=1).sum() >= 6  # at least one full-width stripe
    corners = [nodata[0, 0], nodata[0, -1], nodata[-1, -1], nodata[-1, 0]]
    assert any(corners)
    valid = vv[~nodata]
    assert np.isfinite(valid).all() and -45 < valid.min() and valid.max() < 30


def test_sea_land_levels(scene):
    vv, _ = _read(scene.dir / "VV_dB.tif")
    vh, _ = _read(scene.dir / "VH_dB.tif")
    f = scene.mask_downsample
    land = np.kron(scene.land_mask, np.ones((f, f), bool))[:1500, :1200]
    deep_land = ndimage.binary_erosion(land, iterations=20)
    deep_sea = ndimage.binary_erosion(~land, iterations=20) & (vv != NODATA)
    assert 0 < scene.land_mask.mean() < 0.6
    assert np.median(vv[deep_sea]) == pytest.approx(-20, abs=2.5)
    assert np.median(vh[deep_sea]) == pytest.approx(-27, abs=2.5)
    assert np.median(vv[deep_land]) > np.median(vv[deep_sea]) + 8
    # gamma speckle with ~4.4 looks: std of the sea in dB is ~2-3 dB
    assert 1.5 < vv[deep_sea].std() < 4.0


def test_detections_table(scene):
    df = pd.read_csv(scene.dir / "detections.csv")
    assert list(df.columns) == DETECTION_COLUMNS
    assert list(df.columns[:6]) == XVIEW3_COLUMNS
    assert len(df) == len(scene.detections) >= 9
    assert df.is_vessel.sum() >= 8 and (~df.is_vessel).sum() >= 1
    assert not (df.is_fishing & ~df.is_vessel).any()
    assert df.is_fishing.sum() >= 1
    assert df.loc[~df.is_vessel, "vessel_length_m"].isna().all()
    assert df.loc[df.is_vessel, "vessel_length_m"].between(10, 400).all()
    assert (
        df.detect_scene_row.between(0, 1499).all() and df.detect_scene_column.between(0, 1199).all()
    )
    x, y = scene.transform @ (df.detect_scene_column + 0.5, df.detect_scene_row + 0.5)
    np.testing.assert_allclose(df.detect_x, x)
    np.testing.assert_allclose(df.detect_y, y)


def test_objects_are_bright(scene):
    vv, _ = _read(scene.dir / "VV_dB.tif")
    vh, _ = _read(scene.dir / "VH_dB.tif")
    for det in scene.detections.itertuples():
        r, c = det.detect_scene_row, det.detect_scene_column
        ring = vv[max(r - 40, 0) : r + 41, max(c - 40, 0) : c + 41]
        ring = ring[ring != NODATA]
        assert vv[r, c] > np.median(ring) + 15, det
        ring_vh = vh[max(r - 40, 0) : r + 41, max(c - 40, 0) : c + 41]
        assert vh[r, c] > np.median(ring_vh[ring_vh != NODATA]) + 10, det


def test_distance_from_shore(scene):
    df = scene.detections
    assert (df.distance_from_shore_km > 0.2).all()
    # independent check: distance to the land mask, in km
    f, px_km = scene.mask_downsample, scene.pixel_size / 1000
    dist = ndimage.distance_transform_edt(~scene.land_mask) * f * px_km
    expected = dist[df.detect_scene_row // f, df.detect_scene_column // f]
    np.testing.assert_allclose(df.distance_from_shore_km, expected, atol=1.5 * f * px_km)
    # grows offshore: the bathymetry deepens with it, and land is above sea level
    bathy, _ = _read(scene.dir / "bathymetry.tif")
    depth = bathy[df.detect_scene_row, df.detect_scene_column]
    assert (depth < 0).all()
    assert np.corrcoef(df.distance_from_shore_km, -depth)[0, 1] > 0.8
    land = np.kron(scene.land_mask, np.ones((f, f), bool))[:1500, :1200]
    assert np.median(bathy[ndimage.binary_erosion(land, iterations=10)]) > 0


def test_deterministic_by_seed(tmp_path):
    kw = dict(extra_bands=(), tile=256, workers=2)
    a = make_sar_scene(tmp_path / "a", 600, 500, seed=11, **kw)
    b = make_sar_scene(tmp_path / "b", 600, 500, seed=11, **kw)
    c = make_sar_scene(tmp_path / "c", 600, 500, seed=12, **kw)
    assert not (tmp_path / "a" / "bathymetry.tif").exists()
    serial = make_sar_scene(tmp_path / "s", 600, 500, seed=11, **{**kw, "workers": 1})
    va, vb, vc, vs = (_read(s.dir / "VV_dB.tif")[0] for s in (a, b, c, serial))
    assert np.array_equal(va, vb) and np.array_equal(va, vs) and not np.array_equal(va, vc)
    pd.testing.assert_frame_equal(a.detections, b.detections)
    assert not a.detections.equals(c.detections)


def test_torchgeo_raster_dataset_reads_the_scene(scene):
    pytest.importorskip("torchgeo")
    from torchgeo.datasets import RasterDataset

    class VV(RasterDataset):
        filename_glob = "VV_dB.tif"
        is_image = True

    ds = VV(paths=str(scene.dir))
    assert ds.crs.to_string() == "EPSG:32631"
    x0, y1 = scene.transform @ (0, 0)
    size = 256 * scene.pixel_size
    sample = ds[x0 : x0 + size, y1 - size : y1]
    image = sample["image"]
    assert image.shape[-2:] == (256, 256)
    vv, _ = _read(scene.dir / "VV_dB.tif")
    np.testing.assert_allclose(image.numpy().reshape(256, 256), vv[:256, :256])


def test_make_sar_scenes(tmp_path):
    infos = make_sar_scenes(tmp_path, n=2, size=(400, 300), seed=1, progress=False)
    assert [i.dir.name for i in infos] == ["scene_000", "scene_001"]
    for info in infos:
        assert (info.height, info.width) == (300, 400)
        for name in ("VV_dB.tif", "VH_dB.tif", "bathymetry.tif", "detections.csv"):
            assert (info.dir / name).exists()
    assert not np.array_equal(infos[0].land_mask, infos[1].land_mask)


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="extra band"):
        make_sar_scene(tmp_path, 100, 100, extra_bands=("wind",))
    with pytest.raises(ValueError, match="multiple of 16"):
        make_sar_scene(tmp_path, 100, 100, tile=100)
