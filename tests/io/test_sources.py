"""Lazy image sources over real files: arrays, memmaps, zarr, GeoTIFFs and whole-slide images."""

from __future__ import annotations

import multiprocessing as mp
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import rasterio
import tifffile
import zarr
from affine import Affine
from rasterio.windows import Window

from xt_plugins.io import (
    ArraySource,
    ImageReadError,
    MissingMPPError,
    RasterSource,
    SlideOpenError,
    SlideSource,
    ZarrSource,
    open_image,
)

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"


def fixture_file(*parts: str) -> Path:
    path = FIXTURES.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"third-party fixture {path} not found (../shared/fixtures is absent)")
    return path


def hwc_to_chw(a: np.ndarray) -> np.ndarray:
    return np.moveaxis(a, -1, 0)


def image(c: int = 3, h: int = 40, w: int = 50, dtype=np.uint16) -> np.ndarray:
    return (np.arange(c * h * w) % 1000 + 1).astype(dtype).reshape(c, h, w)


# ---------------------------------------------------------------------------- arrays
def test_array_reads_equal_slicing_and_pad_with_zeros():
    arr = image()
    src = ArraySource(arr)
    assert src.shape == (3, 40, 50) and src.dtype == np.uint16 and src.path is None
    np.testing.assert_array_equal(src.read(5, 7, 10, 12), arr[:, 5:15, 7:19])
    edge = src.read(35, -3, 10, 8)  # bottom-left corner, partly outside
    assert edge.shape == (3, 10, 8)
    np.testing.assert_array_equal(edge[:, :5, 3:], arr[:, 35:, :5])
    assert not edge[:, 5:].any() and not edge[:, :, :3].any()
    assert not src.read(100, 100, 4, 4).any()  # fully outside
    assert src.read(0, 0, 0, 5).shape == (3, 0, 5)
    out = src.read(0, 0, 4, 4)
    out[:] = 0  # a read is a copy: the source is untouched
    assert arr[0, 0, 0] == 1
    gray = ArraySource(arr[0])
    assert gray.shape == (1, 40, 50)
    np.testing.assert_array_equal(gray.read(1, 2, 3, 4)[0], arr[0, 1:4, 2:6])
    with pytest.raises(ValueError, match="window size"):
        src.read(0, 0, -1, 4)
    np.testing.assert_array_equal(src.thumbnail(10), np.moveaxis(arr[:, ::5, ::5], 0, -1))


def test_array_mask_at_edges_nodata_and_nan():
    arr = image()
    src = ArraySource(arr)
    assert src.read_mask(0, 0, 40, 50) is None  # inside, no nodata concept: cheap path
    mask = src.read_mask(-2, 45, 6, 10)
    assert mask.shape == (6, 10)
    assert mask[2:, :5].all() and not mask[:2].any() and not mask[:, 5:].any()
    arr[:, 0, 0] = 7  # nodata in every band -> invalid
    arr[0, 0, 1] = 7  # nodata in one band only -> still data
    masked = ArraySource(arr, nodata=7)
    m = masked.read_mask(0, 0, 2, 3)
    np.testing.assert_array_equal(m, [[False, True, True], [True, True, True]])
    f = image(dtype=np.float32)
    f[1, 3, 4] = np.nan  # NaN in any band -> invalid
    mf = ArraySource(f).read_mask(0, 0, 40, 50)
    assert mf.sum() == 40 * 50 - 1 and not mf[3, 4]


def test_read_then_read_mask_reuses_the_window():
    arr = image(dtype=np.float32)
    src = ArraySource(arr)
    src.read(0, 0, 4, 4)
    arr[:, 0, 0] = np.nan  # changed after the read: the mask of that read is returned
    assert src.read_mask(0, 0, 4, 4).all()
    assert not src.read_mask(0, 0, 4, 4)[0, 0]  # a second call reads afresh


def test_memmap_pickles_by_reference(tmp_path):
    path = tmp_path / "big.dat"
    full = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=(2, 300, 400))
    full[:] = image(2, 300, 400)
    full.flush()
    view = np.load(path, mmap_mode="r")[:, 100:, 50:]  # a view with an offset
    src = open_image(view)
    assert isinstance(src, ArraySource) and src.path == str(path) and src.name == "big.dat"
    blob = pickle.dumps(src)
    assert len(blob) < 2000  # the pixels are not in the pickle
    back = pickle.loads(blob)
    np.testing.assert_array_equal(back.read(10, 20, 30, 40), full[:, 110:140, 70:110])
    np.testing.assert_array_equal(back.read(190, 340, 20, 20), src.read(190, 340, 20, 20))
    assert pickle.loads(pickle.dumps(back)).shape == (2, 200, 350)


def test_zarr_source_from_array_path_and_group(tmp_path):
    arr = image(2, 30, 40, np.float32)
    z = zarr.create_array(tmp_path / "a.zarr", shape=arr.shape, chunks=(2, 16, 16), dtype="float32")
    z[:] = arr
    for src in (
        ZarrSource(z),
        ZarrSource(tmp_path / "a.zarr"),
        open_image(str(tmp_path / "a.zarr")),
    ):
        assert isinstance(src, ZarrSource) and src.shape == (2, 30, 40)
        np.testing.assert_array_equal(src.read(3, 5, 10, 10), arr[:, 3:13, 5:15])
        edge, mask = src.read_with_mask(25, 35, 10, 10)
        np.testing.assert_array_equal(edge[:, :5, :5], arr[:, 25:, 35:])
        assert not edge[:, 5:].any() and mask.sum() == 25
    g = zarr.open_group(tmp_path / "g.zarr", mode="w")
    g.create_array("prob", shape=(30, 40), dtype="uint8")[:] = 5
    g.create_array("label", shape=(30, 40), dtype="uint8")
    with pytest.raises(ValueError, match="holds 2 arrays"):
        ZarrSource(tmp_path / "g.zarr")
    src = ZarrSource(tmp_path / "g.zarr", name="prob")
    assert src.shape == (1, 30, 40) and src.read(0, 0, 2, 2).tolist() == [[[5, 5], [5, 5]]]
    back = pickle.loads(pickle.dumps(src))
    assert back.read(28, 38, 4, 4)[0, :2, :2].tolist() == [[5, 5], [5, 5]]


# ---------------------------------------------------------------------------- rasters
CRS = "EPSG:32631"
TRANSFORM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4650000.0)


def write_raster(path, data, nodata=None, crs=CRS, transform=TRANSFORM, **kw):
    c, h, w = data.shape
    with rasterio.open(
        path, "w", driver="GTiff", height=h, width=w, count=c, dtype=data.dtype.name,
        crs=crs, transform=transform, nodata=nodata, tiled=True, blockxsize=16, blockysize=16, **kw,
    ) as ds:  # fmt: skip
        ds.write(data)
    return path


@pytest.fixture
def geotiff(tmp_path):
    data = image(3, 40, 50)
    data[:, :4, :6] = 0  # a nodata corner in every band
    data[1, 10, 10] = 0  # one zero band: still data
    return write_raster(tmp_path / "scene.tif", data, nodata=0), data


def test_raster_windows_bands_and_nodata_mask(geotiff):
    path, data = geotiff
    src = RasterSource(path)
    assert src.shape == (3, 40, 50) and src.dtype == np.uint16 and src.name == "scene.tif"
    assert src.crs.to_string() == CRS and src.transform == TRANSFORM and src.res == (10.0, 10.0)
    assert src.bounds.left == 500000.0 and src.bounds.top == 4650000.0 and src.nodata == 0
    np.testing.assert_array_equal(src.read(5, 6, 20, 30), data[:, 5:25, 6:36])
    out, mask = src.read_with_mask(-3, 45, 10, 10)
    np.testing.assert_array_equal(out[:, 3:, :5], data[:, :7, 45:])
    assert not out[:, :3].any() and not out[:, :, 5:].any()
    assert mask[3:, :5].all() and mask.sum() == 35
    m = src.read_mask(0, 0, 40, 50)
    assert not m[:4, :6].any() and m[10, 10] and m.sum() == 40 * 50 - 24
    one = RasterSource(path, bands=2)
    assert one.shape == (1, 40, 50)
    np.testing.assert_array_equal(one.read(0, 0, 40, 50)[0], data[1])
    two = RasterSource(path, bands=[3, 1])
    np.testing.assert_array_equal(two.read(8, 9, 5, 5), data[[2, 0], 8:13, 9:14])
    assert RasterSource(path, nodata=1).read_mask(0, 0, 40, 50).sum() == 40 * 50 - 1


def test_raster_pixel_to_map_and_back(geotiff):
    src = RasterSource(geotiff[0])
    xs, ys = src.pixel_to_map([0, 39], [0, 49])
    np.testing.assert_allclose(xs, [500005.0, 500495.0])
    np.testing.assert_allclose(ys, [4649995.0, 4649605.0])
    x, y = src.pixel_to_map(0, 0, offset="ul")
    assert (float(x), float(y)) == (500000.0, 4650000.0)
    rows, cols = src.map_to_pixel(xs, ys)
    np.testing.assert_allclose(rows, [0.5, 39.5])
    np.testing.assert_allclose(cols, [0.5, 49.5])
    with rasterio.open(geotiff[0]) as ds:
        assert ds.xy(39, 49) == (xs[1], ys[1])


def test_raster_nan_and_internal_mask(tmp_path):
    data = image(1, 20, 30, np.float32)
    data[0, 2, 3] = np.nan
    src = RasterSource(write_raster(tmp_path / "f.tif", data))
    m = src.read_mask(0, 0, 20, 30)
    assert m.sum() == 599 and not m[2, 3]
    assert np.isnan(src.read(2, 3, 1, 1)).all()  # values come back as stored
    masked = image(2, 20, 30, np.uint8)
    path = write_raster(tmp_path / "m.tif", masked)
    with rasterio.open(path, "r+") as ds:  # GDAL internal per-dataset mask
        valid = np.full((20, 30), 255, np.uint8)
        valid[:5] = 0
        ds.write_mask(valid)
    m = RasterSource(path).read_mask(0, 0, 20, 30)
    assert not m[:5].any() and m[5:].all()


def test_raster_errors_name_the_file(tmp_path, geotiff):
    with pytest.raises(ValueError, match=r"band 4 is out of range: the file has 3 band\(s\)"):
        RasterSource(geotiff[0], bands=[1, 4])
    with pytest.raises(ValueError, match="scene.tif"):
        RasterSource(geotiff[0], bands=0)
    bad = tmp_path / "notes.tif"
    bad.write_text("not an image")
    with pytest.raises(ImageReadError, match="rasterio cannot open") as info:
        RasterSource(bad)
    assert str(info.value).startswith(str(bad))
    with pytest.raises(FileNotFoundError, match="missing.tif"):
        RasterSource(tmp_path / "missing.tif")


def _put_read(queue, src, window):
    queue.put(src.read(*window).tolist())


def read_in_forked_child(src, window):
    """Read through an inherited (not pickled) source in a forked process."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_put_read, args=(queue, src, window))
    child.start()
    out = queue.get(timeout=60)
    child.join(timeout=60)
    return out


def test_raster_threads_pickle_and_fork(geotiff):
    path, data = geotiff
    src = RasterSource(path, bands=[2, 3])
    with ThreadPoolExecutor(4) as pool:  # one GDAL handle per thread
        outs = list(pool.map(lambda i: src.read(i, i, 10, 10), range(24)))
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out, data[1:, i : i + 10, i : i + 10])
    expected = src.read(5, 5, 10, 10)  # the parent holds an open handle
    back = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(back.read(5, 5, 10, 10), expected)
    assert back.crs == src.crs and back.bands == [2, 3]
    assert read_in_forked_child(src, (5, 5, 10, 10)) == expected.tolist()
    src.close()
    np.testing.assert_array_equal(src.read(5, 5, 10, 10), expected)  # reopens after close


def test_raster_fixture_rgb_byte():
    src = RasterSource(fixture_file("rasterio", "RGB.byte.tif"))
    assert src.shape == (3, 718, 791) and src.dtype == np.uint8 and src.crs.to_epsg() == 32618
    mask = src.read_mask(0, 0, 718, 791)
    assert not mask[0, 0] and mask[359, 395] and 0.5 < mask.mean() < 0.9
    with rasterio.open(src.path) as ds:
        np.testing.assert_array_equal(mask, ds.dataset_mask() > 0)
        np.testing.assert_array_equal(
            src.read(300, 200, 64, 64), ds.read(window=Window(200, 300, 64, 64))
        )
    assert src.thumbnail(100).shape == (91, 100, 3)


def test_raster_fixture_corrupt_all_nodata_and_nan():
    corrupt = RasterSource(fixture_file("rasterio", "corrupt.tif"))
    corrupt.read(0, 0, 16, 16)  # the header and first tiles are fine
    with pytest.raises(ImageReadError, match="rows 512:768, cols 512:768.*failed") as info:
        corrupt.read(512, 512, 256, 256)
    assert str(info.value).startswith(str(corrupt.path))
    empty = RasterSource(fixture_file("rasterio", "all-nodata.tif"))
    assert not empty.read_mask(0, 0, 2475, 71).any()
    nan = RasterSource(fixture_file("rasterio", "float_nan.tif"))
    data, mask = nan.read_with_mask(0, 0, 2, 3)
    np.testing.assert_array_equal(mask, ~np.isnan(data[0]))
    assert 0 < mask.sum() < 6


# ---------------------------------------------------------------------------- slides
SLIDE_H, SLIDE_W, SLIDE_MPP = 256, 320, 0.5


def write_pyramid(path, mpp=SLIDE_MPP, levels=3):
    """A generic-tiff pyramid: level i is level 0 subsampled by 2**i, mpp in pixels/cm."""
    yy, xx = np.mgrid[0:SLIDE_H, 0:SLIDE_W]
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 60, (SLIDE_H, SLIDE_W, 3))
    base = np.stack([xx * 255 // SLIDE_W, yy * 255 // SLIDE_H, (xx + yy) % 256], -1)
    level0 = np.clip(base + noise, 0, 255).astype(np.uint8)  # (H, W, 3)
    pyramid = [np.ascontiguousarray(level0[:: 2**i, :: 2**i]) for i in range(levels)]
    with tifffile.TiffWriter(path) as tif:
        for i, level in enumerate(pyramid):
            kw = {}
            if mpp is not None:
                ppcm = 1e4 / (mpp * 2**i)  # pixels per centimetre
                kw = dict(resolution=(ppcm, ppcm), resolutionunit="CENTIMETER")
            tif.write(level, tile=(64, 64), photometric="rgb", compression="zlib",
                      subfiletype=1 if i else 0, **kw)  # fmt: skip
    return path, pyramid


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    return write_pyramid(tmp_path_factory.mktemp("slides") / "pyramid.tif")


def test_slide_levels_and_exact_reads(pyramid):
    path, levels = pyramid
    src = SlideSource(path)
    assert src.level == 0 and src.shape == (3, 256, 320) and src.dtype == np.uint8
    assert src.level_shapes == ((256, 320), (128, 160), (64, 80)) and src.vendor == "generic-tiff"
    assert src.slide_mpp == pytest.approx(0.5) and src.mpp == pytest.approx(0.5) and src.scale == 1
    np.testing.assert_array_equal(src.read(10, 20, 30, 40), hwc_to_chw(levels[0][10:40, 20:60]))
    one = SlideSource(path, level=1)
    assert one.shape == (3, 128, 160) and one.scale == 2 and one.mpp == pytest.approx(1.0)
    np.testing.assert_array_equal(one.read(33, 17, 40, 50), hwc_to_chw(levels[1][33:73, 17:67]))
    data, mask = one.read_with_mask(120, 150, 16, 16)  # bottom-right corner
    np.testing.assert_array_equal(data[:, :8, :10], np.moveaxis(levels[1][120:, 150:], -1, 0))
    assert not data[:, 8:].any() and not data[:, :, 10:].any()
    assert mask[:8, :10].all() and mask.sum() == 80
    assert one.read_mask(0, 0, 8, 8).all()
    with pytest.raises(ValueError, match=r"level 3 is out of range: the slide has 3 level"):
        SlideSource(path, level=3)
    with pytest.raises(ValueError, match="either level= or mpp="):
        SlideSource(path, level=1, mpp=1.0)


def test_slide_level_choice_by_mpp(pyramid):
    path, levels = pyramid
    exact = SlideSource(path, mpp=1.0)
    assert (exact.level, exact.resized, exact.mpp, exact.scale) == (1, False, 1.0, 2.0)
    near = SlideSource(path, mpp=1.9)  # 5% from level 2 (2.0 um/px)
    assert near.level == 2 and not near.resized and near.mpp == pytest.approx(2.0)
    np.testing.assert_array_equal(near.read(0, 0, 64, 80), np.moveaxis(levels[2], -1, 0))
    strict = SlideSource(path, mpp=1.9, mpp_tolerance=0.01)  # -> level 1 (1.0) resized
    assert strict.level == 1 and strict.resized and strict.shape == (3, 67, 84)
    resized = SlideSource(path, mpp=1.5)
    assert resized.level == 1 and resized.resized
    assert resized.shape == (3, round(128 / 1.5), round(160 / 1.5))
    assert resized.mpp == pytest.approx(1.5, rel=0.01)
    assert resized.scale == pytest.approx(3, rel=0.01)
    with pytest.warns(UserWarning, match="upsampled"):
        up = SlideSource(path, mpp=0.25)
    assert up.level == 0 and up.shape == (3, 512, 640)


def test_slide_resized_reads_are_seamless_and_match_monai(pyramid):
    from monai.data import WSIReader

    path, _ = pyramid
    src = SlideSource(path, mpp=1.5)
    _, h, w = src.shape
    tiled = np.zeros((3, h, w), np.uint8)
    for y in range(0, h, 23):  # odd tile sizes, not aligned to anything
        for x in range(0, w, 31):
            tiled[:, y : y + 23, x : x + 31] = src.read(y, x, 23, 31)[:, : h - y, : w - x]
    reader = WSIReader(backend="openslide")
    whole = reader.get_wsi_at_mpp(reader.read(str(path)), 1.5, rtol=0.1)  # whole level resized
    assert whole.shape == tiled.shape
    assert np.abs(whole.astype(int) - tiled).max() <= 1
    assert src.read_mask(h - 5, w - 5, 10, 10).sum() == 25


def test_slide_thumbnail_uses_a_coarse_level(pyramid):
    src = SlideSource(pyramid[0])
    assert src._thumbnail_level(64) == (2, (51, 64))
    thumb = src.thumbnail(max_side=64)
    assert thumb.shape == (51, 64, 3) and thumb.dtype == np.uint8
    assert src.thumbnail(max_side=80).shape == (64, 80, 3)
    np.testing.assert_array_equal(src.thumbnail(max_side=80), pyramid[1][2])  # level 2 as is
    assert src._thumbnail_level(100)[0] == 1
    assert src.thumbnail(max_side=10_000).shape == (256, 320, 3)  # never upsampled


def test_slide_without_mpp(tmp_path):
    path, _ = write_pyramid(tmp_path / "nompp.tif", mpp=None)
    assert SlideSource(path).mpp is None
    with pytest.raises(MissingMPPError, match="slide_mpp") as info:
        SlideSource(path, mpp=1.0)
    assert str(info.value).startswith(str(path)) and "--slide-mpp" in str(info.value)
    src = SlideSource(path, mpp=1.0, slide_mpp=0.5)
    assert src.level == 1 and src.mpp == 1.0 and src.slide_mpp == 0.5


def test_slide_pickle_fork_and_reopen(pyramid):
    src = SlideSource(pyramid[0], mpp=1.5)
    expected = src.read(10, 10, 20, 20)
    assert read_in_forked_child(src, (10, 10, 20, 20)) == expected.tolist()
    back = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(back.read(10, 10, 20, 20), expected)
    assert (back.level, back.shape, back.mpp) == (src.level, src.shape, src.mpp)
    with src:
        pass  # closed
    np.testing.assert_array_equal(src.read(10, 10, 20, 20), expected)


def test_slide_fixtures_svs_tiff_dicom():
    import openslide

    svs = SlideSource(fixture_file("openslide", "small.svs"))
    assert svs.shape == (3, 16, 16) and svs.mpp == pytest.approx(0.499) and svs.vendor == "aperio"
    with openslide.OpenSlide(svs.path) as slide:
        direct = np.asarray(slide.read_region((0, 0), 0, (16, 16)).convert("RGB"))
    np.testing.assert_array_equal(svs.read(0, 0, 16, 16), np.moveaxis(direct, -1, 0))
    boxes = SlideSource(fixture_file("openslide", "boxes.tiff"))
    assert boxes.level_count == 4 and boxes.shape == (3, 250, 300)
    assert boxes.slide_mpp == pytest.approx(352.78, rel=1e-4)
    half = SlideSource(boxes.path, mpp=705.5)
    assert half.level == 1 and half.shape == (3, 125, 150) and not half.resized
    assert boxes._thumbnail_level(64)[0] == 2 and boxes.thumbnail(64).shape == (53, 64, 3)
    dcm = open_image(fixture_file("openslide", "boxes_0.dcm"))
    assert isinstance(dcm, SlideSource) and dcm.vendor == "dicom" and dcm.shape == (3, 16, 16)
    assert dcm.read(0, 0, 16, 16).any()


def test_slide_fixture_errors():
    path = fixture_file("openslide", "unopenable.tiff")
    with pytest.raises(SlideOpenError, match="Unsupported TIFF compression") as info:
        SlideSource(path)
    assert str(info.value).startswith(str(path)) and isinstance(info.value, ImageReadError)
    with pytest.raises(SlideOpenError):
        open_image(path)  # rasterio cannot open it either: OpenSlide's reason is reported
    bad = SlideSource(fixture_file("openslide", "unreadable.svs"))  # opens fine
    with pytest.raises(ImageReadError, match="Bogus marker length") as info:
        bad.read(0, 0, 16, 16)
    message = str(info.value)
    assert message.startswith(bad.path) and "rows 0:16, cols 0:16 of level 0" in message


# ---------------------------------------------------------------------------- dispatch
def test_open_image_dispatch(tmp_path, geotiff, pyramid):
    arr = image()
    assert isinstance(open_image(arr), ArraySource)
    assert isinstance(open_image(arr, nodata=0), ArraySource)
    z = zarr.create_array(store={}, shape=(3, 8, 8), dtype="uint8")
    assert isinstance(open_image(z), ZarrSource)
    assert isinstance(open_image(geotiff[0]), RasterSource)
    assert isinstance(open_image(str(pyramid[0])), SlideSource)  # pyramid, no georeferencing
    assert isinstance(open_image(pyramid[0], kind="raster"), RasterSource)
    flat = tmp_path / "flat.tif"
    rgb = np.moveaxis(image(3, 32, 32, np.uint8), 0, -1)
    tifffile.imwrite(flat, rgb, tile=(16, 16), photometric="rgb")  # one tiled level
    assert isinstance(open_image(flat), RasterSource)
    assert isinstance(open_image(flat, kind="slide"), SlideSource)
    assert isinstance(open_image(flat, slide_mpp=0.5), SlideSource)  # slide options -> slide
    cog = write_raster(tmp_path / "cog.tif", image(1, 64, 64, np.uint8))
    with rasterio.open(cog, "r+") as ds:
        ds.build_overviews([2, 4])  # tiled + overviews, but georeferenced
    assert isinstance(open_image(cog), RasterSource)
    src = open_image(geotiff[0])
    assert open_image(src) is src
    with pytest.raises(ValueError, match="already open"):
        open_image(src, bands=1)
    with pytest.raises(TypeError, match="numpy arrays.*zarr.*GeoTIFF.*slide"):
        open_image([[1, 2], [3, 4]])
    with pytest.raises(FileNotFoundError, match="nope.svs"):
        open_image(tmp_path / "nope.svs")
    with pytest.raises(ValueError, match="kind must be"):
        open_image(geotiff[0], kind="video")


def test_open_image_fixture_dispatch():
    assert isinstance(open_image(fixture_file("rasterio", "RGB.byte.tif")), RasterSource)
    assert isinstance(open_image(fixture_file("rasterio", "all-nodata.tif")), RasterSource)
    assert isinstance(open_image(fixture_file("rasterio", "float_nan.tif")), RasterSource)
    assert isinstance(open_image(fixture_file("openslide", "boxes.tiff")), SlideSource)
    assert isinstance(open_image(fixture_file("openslide", "small.svs")), SlideSource)


# ---------------------------------------------------------------------------- bounded caches
def run_python(code: str, env: dict[str, str] | None = None) -> dict:
    """Run ``code`` in a fresh interpreter (GDAL / OpenSlide state is per process); its JSON."""
    import json
    import os
    import subprocess
    import sys

    base = {k: v for k, v in os.environ.items() if k != "GDAL_CACHEMAX"}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**base, "OMP_NUM_THREADS": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


MIB = 2**20

CACHE_SETTINGS = """
import json, psutil, rasterio
from rasterio.env import get_gdal_config
from xt_plugins.io import RasterSource
small, big = {small!r}, {big!r}
out = {{"before": get_gdal_config("GDAL_CACHEMAX")}}
RasterSource(small, cache_mb=None).read(0, 0, 8, 8)
out["none"] = get_gdal_config("GDAL_CACHEMAX")
RasterSource(small).read(0, 0, 8, 8)
out["default"] = get_gdal_config("GDAL_CACHEMAX")
with rasterio.Env(GDAL_CACHEMAX=300 * 2**20):
    RasterSource(small, cache_mb=8).read(0, 0, 8, 8)
    out["in_env"] = get_gdal_config("GDAL_CACHEMAX")
RasterSource(small, cache_mb=128)
out["128"] = get_gdal_config("GDAL_CACHEMAX")
src = RasterSource(big, cache_mb=8)
out["8"] = get_gdal_config("GDAL_CACHEMAX")
src.read(0, 0, 512, 512)
start = psutil.Process().memory_info().rss
for _ in range(2):  # every block read twice: a bounded cache keeps only the latest
    for y in range(0, src.height, 512):
        for x in range(0, src.width, 512):
            src.read(y, x, 512, 512)
out["grown_mb"] = (psutil.Process().memory_info().rss - start) / 2**20  # held now
print(json.dumps(out))
"""


def write_big_raster(path: Path, size: int = 3072) -> Path:
    """A (3, size, size) uint8 tiled, uncompressed GeoTIFF (27 MiB decoded at 3072)."""
    row = (np.arange(size, dtype=np.uint16) % 251).astype(np.uint8)
    with rasterio.open(
        path, "w", driver="GTiff", height=size, width=size, count=3, dtype="uint8", crs=CRS,
        transform=TRANSFORM, tiled=True, blockxsize=256, blockysize=256,
    ) as ds:  # fmt: skip
        for y in range(0, size, 512):
            block = np.broadcast_to(row, (3, 512, size)) + np.uint8(y % 7)
            ds.write(block, window=Window(0, y, size, 512))
    return path


def test_raster_bounds_gdal_block_cache_unless_the_user_set_it(tmp_path, geotiff):
    big = write_big_raster(tmp_path / "b.tif")
    code = CACHE_SETTINGS.format(small=str(geotiff[0]), big=str(big))
    out = run_python(code)
    assert out["before"] > 64 * MIB  # GDAL's default (5 % of RAM) on any machine we run on
    assert out["none"] == out["before"]  # cache_mb=None leaves GDAL alone
    assert out["default"] == 64 * MIB  # bounded without the user touching GDAL
    assert out["in_env"] == 300 * MIB  # a rasterio.Env(GDAL_CACHEMAX=...) wins
    assert out["128"] == 64 * MIB and out["8"] == 8 * MIB  # lowered, never raised
    assert out["grown_mb"] < 16, out  # 8 MiB of blocks + read buffers, not the 27 MiB read
    # the same pass with a size the user chose (GDAL_CACHEMAX=512 MB) keeps every block
    user = run_python(code, env={"GDAL_CACHEMAX": "512"})
    assert user["before"] == user["default"] == user["8"] == 512 * MIB
    assert user["grown_mb"] > 24, user
    with pytest.raises(ValueError, match="cache_mb must be >= 0"):
        RasterSource(geotiff[0], cache_mb=-1)


STREAM_SLIDE = """
import json, psutil
from xt_plugins.io import SlideSource
def grown(cache_mb):  # two handles on the slide, every tile read through each
    sources = [SlideSource({path!r}, cache_mb=cache_mb) for _ in range(2)]
    start = psutil.Process().memory_info().rss
    for s in sources:
        for y in range(0, s.height, 512):
            for x in range(0, s.width, 512):
                s.read(y, x, 512, 512)
    return (psutil.Process().memory_info().rss - start) / 2**20  # resident now: what is held
print(json.dumps({{"bounded": grown(8), "default": grown(None)}}))
"""


def test_slide_tile_cache_is_bounded_and_shared(tmp_path):
    size = 3072  # 36 MiB of decoded (32-bit ARGB) tiles
    row = (np.arange(size, dtype=np.uint16) % 251).astype(np.uint8)
    level = np.ascontiguousarray(np.broadcast_to(row[None, :, None], (size, size, 3)))
    path = tmp_path / "flat_slide.tiff"
    tifffile.imwrite(path, level, tile=(256, 256), photometric="rgb")
    assert SlideSource(path).cache_mb == 64
    out = run_python(STREAM_SLIDE.format(path=str(path)))
    assert out["bounded"] < 20, out  # one shared 8 MiB cache for both handles
    assert out["default"] > 48, out  # OpenSlide's default: a private 32 MiB per open slide
    with pytest.raises(ValueError, match="cache_mb must be >= 0"):
        SlideSource(path, cache_mb=-1)


def test_slide_reads_equal_openslide_and_mask_transparent_pixels(pyramid):
    import openslide
    from PIL import Image

    path, _ = pyramid
    rng = np.random.default_rng(3)
    with openslide.OpenSlide(str(path)) as slide:
        for level in range(3):
            src = SlideSource(path, level=level)
            _, h, w = src.shape
            for _ in range(5):
                y, x = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
                rh, rw = int(rng.integers(1, h - y + 1)), int(rng.integers(1, w - x + 1))
                ds = 2**level
                ref = slide.read_region((x * ds, y * ds), level, (rw, rh)).convert("RGB")
                data, mask = src.read_with_mask(y, x, rh, rw)
                np.testing.assert_array_equal(data, hwc_to_chw(np.asarray(ref)))
                assert mask.shape == (rh, rw) and mask.all() and data.flags.writeable
    rgba = np.random.default_rng(0).integers(0, 256, (5, 7, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[1, 2, 3], rgba[4, 6, 3], rgba[0, 0, 3] = 0, 127, 128  # transparent, edge, valid
    rgb, mask = SlideSource._split_rgba(Image.fromarray(rgba, "RGBA"))
    expected = rgba[..., 3] >= 128
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(rgb, hwc_to_chw(rgba[..., :3] * expected[..., None]))
