"""Shared test helpers: tiny model configs (fast on 2 CPU cores) and fixture paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(int(os.environ.get("XT_TEST_THREADS", "1")))

REPO = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"

#: Tiny region encoders: same architectures as the registered models, a fraction of the width.
TINY_BACKBONES: dict[str, dict] = {
    "swinv2_tiny": dict(embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), window_size=4),
    "convnext_tiny": dict(dims=(24, 48, 96, 192), depths=(1, 1, 1, 1)),
    "hiera_base": dict(embed_dim=24, num_heads=1, stages=(1, 1, 1, 1)),
}
#: Tiny context encoders: one layer, short segments.
TINY_CONTEXT = dict(
    depth=1, segment_len=8, mem_len=16, d_state=8, exact_threshold=64, block_size=16, sample_size=8
)


def tiny_model(backbone: str = "convnext_tiny", context: str = "mamba", **kwargs):
    """A tiny xT model (region 64 px unless given)."""
    import xt_plugins

    kwargs.setdefault("region_size", 64)
    kwargs.setdefault("context_kwargs", dict(TINY_CONTEXT))
    kw = dict(TINY_BACKBONES[backbone])
    kw.update(kwargs)
    torch.manual_seed(0)
    return xt_plugins.create_model(backbone, context, **kw)


@pytest.fixture
def fixtures_dir() -> Path:
    """../shared/fixtures, or skip when the folder is absent."""
    if not SHARED_FIXTURES.is_dir():
        pytest.skip(f"third-party fixtures not found at {SHARED_FIXTURES}")
    return SHARED_FIXTURES
