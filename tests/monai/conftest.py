"""Fixtures of the MONAI tests: small generated slides, bad slides and a tiny XTNet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from tests.conftest import TINY_BACKBONES, TINY_CONTEXT

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"

#: Tests work at 1 um/px (level 1 of the 0.5 um/px slides) with 64-px regions.
MPP = 1.0
REGION = 64
THUMB = 512
#: XTNet arguments of a tiny model (same as the ``--model-kwargs`` / bundle overrides).
TINY_XTNET: dict = dict(
    region_encoder="convnext_tiny",
    context="mamba",
    region_size=REGION,
    context_kwargs=dict(TINY_CONTEXT),
    **TINY_BACKBONES["convnext_tiny"],
)


def tiny_xtnet(seed: int = 0, **kwargs):
    """A tiny XTNet (ConvNeXt 24..192 channels, one Mamba layer, 64-px regions)."""
    from xt_plugins.monai import XTNet

    torch.manual_seed(seed)
    return XTNet(**{**TINY_XTNET, **kwargs})


def region_means(mask: np.ndarray, step: float, rows: int, cols: int) -> np.ndarray:
    """Mean of a low-resolution ground-truth ``mask`` over each region (``step`` mask px each)."""
    out = np.zeros((rows, cols))
    for r in range(rows):
        for c in range(cols):
            y0, x0 = int(r * step), int(c * step)
            if y0 < mask.shape[0] and x0 < mask.shape[1]:
                out[r, c] = mask[y0 : int((r + 1) * step), x0 : int((c + 1) * step)].mean()
    return out


def fixture_file(name: str) -> Path:
    """A third-party slide of ../shared/fixtures/openslide, or skip."""
    path = FIXTURES / "openslide" / name
    if not path.exists():
        pytest.skip(f"third-party fixture {path} not found (../shared/fixtures is absent)")
    return path


def write_flat_tiff(path: Path, rgb: np.ndarray, mpp: float | None) -> Path:
    """One-level tiled TIFF that OpenSlide opens as generic-tiff; no mpp when ``mpp`` is None."""
    kwargs: dict = dict(tile=(256, 256), photometric="rgb")
    if mpp is not None:
        kwargs.update(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    tifffile.imwrite(path, rgb, **kwargs)
    return path


@pytest.fixture(scope="session")
def slides(tmp_path_factory):
    """4 generated slides (2000 x 1500 px at 0.5 um/px, labels 0, 1, 0, 1) with labels.csv."""
    from xt_plugins.data import make_slides

    out = tmp_path_factory.mktemp("slides")
    infos = make_slides(out, 4, size=(2000, 1500), mpp=0.5, seed=0, progress=False)
    return out, infos


@pytest.fixture(scope="session")
def bad_slides(tmp_path_factory, slides):
    """Generated bad slides: one without mpp (real tissue), one blank (no tissue)."""
    from xt_plugins.io import SlideSource

    out = tmp_path_factory.mktemp("bad")
    with SlideSource(slides[1][0].path) as src:
        rgb = np.moveaxis(src.read(0, 0, 1500, 2000), 0, -1)
    no_mpp = write_flat_tiff(out / "no_mpp.tiff", rgb, None)
    blank = write_flat_tiff(out / "blank.tiff", np.full((1500, 2000, 3), 248, np.uint8), 0.5)
    return {"no_mpp": no_mpp, "blank": blank}
