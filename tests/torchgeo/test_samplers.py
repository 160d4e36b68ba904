"""NestedRegionGeoSampler on a plain TorchGeo RasterDataset: alignment, nodata skipping, ROI."""

import shutil

import numpy as np
import pandas as pd
import pytest
import shapely
import torch
from rasterio.transform import from_origin
from torchgeo.datasets import RasterDataset

from xt_plugins.io import ImageReadError, write_geotiff
from xt_plugins.torchgeo.samplers import NestedRegionGeoSampler, validity_grid

RES = 10.0
WEST, NORTH = 500_000.0, 6_000_000.0


class _Tiles(RasterDataset):
    filename_glob = "*.tif"


@pytest.fixture(scope="module")
def raster(tmp_path_factory):
    """A 300 x 520 (rows x cols) float32 GeoTIFF: left 200 columns nodata, and a NaN block."""
    d = tmp_path_factory.mktemp("raster")
    data = np.ones((1, 300, 520), np.float32)
    data[:, :, :200] = -9999.0
    data[:, 256:, 448:] = np.nan
    write_geotiff(
        d / "a.tif",
        data,
        crs="EPSG:32631",
        transform=from_origin(WEST, NORTH, RES, RES),
        nodata=-9999.0,
    )
    return d


def test_windows_are_aligned_and_empty_ones_skipped(raster):
    ds = _Tiles(paths=raster)
    sampler = NestedRegionGeoSampler(ds, window_px=128, region_px=64, stride=64, min_valid=0.5)
    assert len(sampler) == len(list(sampler)) == len(sampler.windows) > 0
    for w in sampler.windows:
        assert w.row % 64 == 0 and w.col % 64 == 0
        xs, ys, ts = w.geoslice
        assert (xs.start - WEST) / RES == w.col and (NORTH - ys.stop) / RES == w.row
        assert (xs.stop - xs.start, ys.stop - ys.start) == (128 * RES, 128 * RES)
        assert xs.step == RES and ys.step == RES and ts.start <= ts.stop
        # exact valid fraction (the mask is read at full resolution here)
        col0, col1 = max(w.col, 200), min(w.col + 128, 520)
        rows = min(w.row + 128, 300) - w.row
        nan_rows = max(0, min(w.row + 128, 300) - max(w.row, 256))
        nan_cols = max(0, min(w.col + 128, 520) - max(w.col, 448))
        expected = (rows * max(0, col1 - col0) - nan_rows * nan_cols) / 128**2
        assert w.valid_fraction == pytest.approx(expected)
        assert w.valid_fraction >= 0.5
    cols = {w.col for w in sampler.windows}
    assert min(cols) == 192  # windows left of column 200 - 64 are mostly nodata: skipped
    # all windows, rows 0..256 by 64 (the last hangs over the bottom edge)
    every = NestedRegionGeoSampler(ds, 128, 64, stride=64, min_valid=0.0)
    assert {w.row for w in every.windows} == {0, 64, 128, 192}
    assert max(w.col for w in every.windows) == 448  # 448 + 128 > 520: hangs over the edge
    assert all(w.valid_fraction > 0 for w in every.windows)


def test_samples_read_through_the_dataset(raster):
    ds = _Tiles(paths=raster)
    sampler = NestedRegionGeoSampler(ds, window_px=(64, 128), region_px=64, min_valid=0.9)
    for geoslice in sampler:
        sample = ds[geoslice]
        assert sample["image"].shape == (1, 64, 128)
        assert (sample["image"] == 1).all()  # only fully valid windows are kept


def test_roi_toi_shuffle_and_length(raster):
    ds = _Tiles(paths=raster)
    roi = shapely.box(WEST + 320 * RES, NORTH - 128 * RES, WEST + 520 * RES, NORTH)
    sampler = NestedRegionGeoSampler(ds, 64, 64, roi=roi, min_valid=0.5)
    assert sampler.windows and all(w.col >= 320 and w.row < 128 for w in sampler.windows)
    full = NestedRegionGeoSampler(ds, 64, 64, min_valid=0.5)
    ordered = [w.geoslice for w in full.windows]
    shuffled = list(
        NestedRegionGeoSampler(ds, 64, 64, shuffle=True, generator=torch.Generator().manual_seed(1))
    )
    assert sorted(map(str, shuffled)) == sorted(map(str, ordered)) and shuffled != ordered
    assert len(list(NestedRegionGeoSampler(ds, 64, 64, length=5))) == 5
    # a RasterDataset without dates spans all time: toi clips the time slice of each window
    toi = pd.Interval(pd.Timestamp("2020-01-01"), pd.Timestamp("2020-01-02"))
    t = next(iter(NestedRegionGeoSampler(ds, 64, 64, toi=toi)))[2]
    assert (t.start, t.stop) == (toi.left, toi.right)
    with pytest.warns(UserWarning, match="no window"):
        assert len(NestedRegionGeoSampler(ds, 64, 64, roi=shapely.box(0, 0, 1, 1))) == 0


def test_bad_sizes_are_clear_errors(raster):
    ds = _Tiles(paths=raster)
    with pytest.raises(ValueError, match="multiple of region_px=64"):
        NestedRegionGeoSampler(ds, 100, 64)
    with pytest.raises(ValueError, match="stride"):
        NestedRegionGeoSampler(ds, 128, 64, stride=96)
    with pytest.raises(ValueError, match="min_valid"):
        NestedRegionGeoSampler(ds, 128, 64, min_valid=2)


def test_corrupt_file_error_names_it(fixtures_dir, tmp_path):
    shutil.copy(fixtures_dir / "rasterio" / "corrupt.tif", tmp_path / "corrupt.tif")
    ds = _Tiles(paths=tmp_path)
    with pytest.raises(ImageReadError, match=r"corrupt\.tif.*(IReadBlock|TIFFReadEncodedTile)"):
        NestedRegionGeoSampler(ds, 512, 256)


def test_all_nodata_fixture_gives_no_window(fixtures_dir):
    mask, factor = validity_grid(fixtures_dir / "rasterio" / "all-nodata.tif")
    assert not mask.any() and factor == (1.0, 1.0)
