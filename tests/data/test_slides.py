"""Synthetic whole-slide images: OpenSlide / MONAI compatibility, content, determinism, memory."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from xt_plugins.data import make_slide, make_slides, render_slide_tile

openslide = pytest.importorskip("openslide")


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    """A 3000 x 2000 tumor slide, 256-px tiles, JPEG."""
    path = tmp_path_factory.mktemp("slides") / "tumor.tiff"
    return make_slide(path, 3000, 2000, tile=256, seed=1, tumor=True, workers=1)


def _gray(region: Image.Image) -> np.ndarray:
    return np.asarray(region.convert("RGB"), np.float32).mean(-1)


def _deepest(mask: np.ndarray) -> tuple[int, int]:
    """(row, col) of the mask pixel farthest from the mask border."""
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    return np.unravel_index(int(np.argmax(depth)), mask.shape)


def _read_centred(osr, info, mask_rc, size: int) -> np.ndarray:
    f = info.mask_downsample
    cy, cx = (mask_rc[0] + 0.5) * f, (mask_rc[1] + 0.5) * f
    return _gray(osr.read_region((int(cx - size / 2), int(cy - size / 2)), 0, (size, size)))


def test_opens_with_openslide(slide):
    osr = openslide.OpenSlide(str(slide.path))
    assert osr.dimensions == (3000, 2000)
    assert osr.level_count == slide.level_count > 1
    for k, ds in enumerate(osr.level_downsamples):
        assert ds == pytest.approx(2**k, rel=0.01)
    assert float(osr.properties["openslide.mpp-x"]) == 0.5
    assert float(osr.properties["openslide.mpp-y"]) == 0.5
    assert osr.properties["openslide.vendor"] == "generic-tiff"
    assert min(osr.level_dimensions[-1]) <= 256


def test_monai_reads_mpp(slide):
    from monai.data import WSIReader

    reader = WSIReader(backend="openslide")
    wsi = reader.read(str(slide.path))
    assert reader.get_mpp(wsi, 0) == pytest.approx((0.5, 0.5))
    assert reader.get_mpp(wsi, 1) == pytest.approx((1.0, 1.0))
    data, meta = reader.get_data(wsi, location=(0, 0), size=(64, 96), level=0)
    assert data.shape == (3, 64, 96)


def test_tissue_where_mask_says(slide):
    """Level 2 (one mask pixel = 2 x 2 pixels): tissue dark, glass white, per mask pixel."""
    assert slide.mask_downsample == 8
    osr = openslide.OpenSlide(str(slide.path))
    w2, h2 = osr.level_dimensions[2]
    img = _gray(osr.read_region((0, 0), 2, (w2, h2)))  # (500, 750)
    mh, mw = slide.tissue_mask.shape
    means = img[: mh * 2, : mw * 2].reshape(mh, 2, mw, 2).mean((1, 3))  # (mh, mw)
    inside = ndimage.binary_erosion(slide.tissue_mask, iterations=4)
    outside = ndimage.binary_erosion(~slide.tissue_mask, iterations=4)
    assert inside.sum() > 100 and outside.sum() > 100
    assert means[inside].mean() < 215
    assert means[outside].min() > 240
    # and at full resolution
    assert _read_centred(osr, slide, _deepest(slide.tissue_mask), 256).mean() < 215
    assert _read_centred(osr, slide, _deepest(~slide.tissue_mask), 256).min() > 240


def test_tumor_differs_from_normal_tissue(slide):
    assert slide.label == 1 and 0 < slide.tumor_fraction < 1
    assert not (slide.tumor_mask & ~slide.tissue_mask).any()
    osr = openslide.OpenSlide(str(slide.path))
    normal = slide.tissue_mask & ~ndimage.binary_dilation(slide.tumor_mask, iterations=20)
    tumor = _read_centred(osr, slide, _deepest(slide.tumor_mask), 128)
    healthy = _read_centred(osr, slide, _deepest(normal), 128)
    assert tumor.mean() < healthy.mean() - 25
    assert (tumor < 120).mean() > 2 * (healthy < 120).mean()  # many more dark nuclei pixels


def test_levels_agree_with_downsampled_level0(slide):
    osr = openslide.OpenSlide(str(slide.path))
    cy, cx = _deepest(slide.tissue_mask)
    y0, x0 = int(cy * 8 - 256), int(cx * 8 - 256)
    level0 = np.asarray(osr.read_region((x0, y0), 0, (512, 512)).convert("RGB"), np.float32)
    level1 = np.asarray(osr.read_region((x0, y0), 1, (256, 256)).convert("RGB"), np.float32)
    blocks0 = level0.reshape(8, 64, 8, 64, 3).mean((1, 3))
    blocks1 = level1.reshape(8, 32, 8, 32, 3).mean((1, 3))
    assert np.abs(blocks0 - blocks1).mean() < 12


def test_deterministic_by_seed(tmp_path):
    kw = dict(tile=256, tumor=True, workers=2)
    a = make_slide(tmp_path / "a.tiff", 1100, 700, seed=7, **kw)
    b = make_slide(tmp_path / "b.tiff", 1100, 700, seed=7, **kw)
    c = make_slide(tmp_path / "c.tiff", 1100, 700, seed=8, **kw)
    serial = make_slide(tmp_path / "s.tiff", 1100, 700, seed=7, **{**kw, "workers": 1})
    digest = [hashlib.sha256(s.path.read_bytes()).hexdigest() for s in (a, b, c, serial)]
    assert digest[0] == digest[1] == digest[3] != digest[2]
    regions = [
        openslide.OpenSlide(str(s.path)).read_region((300, 200), 0, (400, 300)).tobytes()
        for s in (a, b, c)
    ]
    assert regions[0] == regions[1] != regions[2]
    assert np.array_equal(a.tumor_mask, b.tumor_mask)


@pytest.mark.parametrize("compression", ["lzw", "deflate"])
def test_lossless_compressions_match_and_jpeg_is_close(tmp_path, compression):
    kw = dict(seed=3, tumor=True, tile=256, workers=1)
    lossless = make_slide(tmp_path / "l.tiff", 900, 600, compression=compression, **kw)
    raw = make_slide(tmp_path / "r.tiff", 900, 600, compression=None, **kw)
    jpeg = make_slide(tmp_path / "j.tiff", 900, 600, compression="jpeg", **kw)
    read = [
        np.asarray(openslide.OpenSlide(str(s.path)).read_region((0, 0), 0, (900, 600)), np.int16)
        for s in (lossless, raw, jpeg)
    ]
    assert np.array_equal(read[0], read[1])
    assert np.abs(read[2] - read[1]).mean() < 6
    # the file's pixels are exactly what render_slide_tile gives
    tile = render_slide_tile(900, 600, 0, 1, 2, seed=3, tumor=True, tile=256)
    assert np.array_equal(read[1][256:512, 512:768, :3], tile)


def test_make_slides_writes_labels_and_masks(tmp_path):
    infos = make_slides(tmp_path, n=4, size=(800, 600), seed=0, tile=256, progress=False)
    labels = pd.read_csv(tmp_path / "labels.csv")
    assert list(labels.columns) == ["slide", "label", "tumor_fraction", "width", "height", "mpp"]
    assert sorted(labels.label) == [0, 0, 1, 1]
    assert list(labels.slide) == [f"slide_{i:03d}.tiff" for i in range(4)]
    for info, row in zip(infos, labels.itertuples(), strict=True):
        assert info.path.exists() and (row.width, row.height, row.mpp) == (800, 600, 0.5)
        assert (row.tumor_fraction > 0) == bool(row.label)
        mask = np.asarray(Image.open(tmp_path / "masks" / f"{info.path.stem}_tumor.png"))
        assert mask.shape == info.tissue_mask.shape
        assert np.array_equal(mask > 0, info.tumor_mask)


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="multiple of 16"):
        make_slide(tmp_path / "x.tiff", 100, 100, tile=100)
    with pytest.raises(ValueError, match="compression"):
        make_slide(tmp_path / "x.tiff", 100, 100, compression="png")


@pytest.mark.slow
def test_memory_is_bounded_for_a_large_slide(tmp_path):
    """20000 x 20000 (1.2 GB of RGB) in a fresh process: peak RSS grows by far less than that."""
    code = textwrap.dedent(
        f"""
        import resource
        from xt_plugins.data import make_slide
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        make_slide({str(tmp_path / "big.tiff")!r}, 20000, 20000, seed=2, tumor=True, workers=2)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) / 1024)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    growth_mb = float(out.stdout.strip().splitlines()[-1])
    assert growth_mb < 1024, f"peak RSS grew by {growth_mb:.0f} MB"
    osr = openslide.OpenSlide(str(tmp_path / "big.tiff"))
    assert osr.dimensions == (20000, 20000) and osr.level_count == 7
