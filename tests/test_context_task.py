"""The circle-left-of-square task: generator properties, and that context (only) solves it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from xt_plugins.data.context_task import (
    TEXTURE_MEAN,
    TEXTURE_STD,
    ContextTaskDataset,
    render_context_task,
    sample_context_task,
    swap_marks,
)
from xt_plugins.nn.tokenize import RegionGrid

REPO = Path(__file__).resolve().parents[1]


def _regions(image: np.ndarray, region: int) -> list[bytes]:
    """Every region's pixels as bytes, in scan order."""
    _, h, w = image.shape
    tiles = RegionGrid(h, w, region).nest(torch.from_numpy(image)[None])
    return [t.numpy().tobytes() for t in tiles]


def _centre_x(image: np.ndarray, rgb) -> float:
    """Mean column of the pixels that have exactly the colour ``rgb``."""
    hit = np.all(image == np.asarray(rgb, np.float32)[:, None, None], axis=0)
    assert hit.any()
    return float(np.nonzero(hit)[1].mean())


def test_deterministic_by_seed_and_index():
    a = sample_context_task(3, 7, 256, 32)
    b = sample_context_task(3, 7, 256, 32)
    assert a == b
    np.testing.assert_array_equal(render_context_task(a), render_context_task(b))
    assert sample_context_task(4, 7, 256, 32) != a
    assert sample_context_task(3, 8, 256, 32) != a
    ds = ContextTaskDataset(10, seed=3, size=256, region=32)
    image, label = ds[7]
    np.testing.assert_array_equal(image.numpy(), render_context_task(a))
    assert label == a.label


def test_labels_balanced_and_alternating():
    ds = ContextTaskDataset(200, seed=0, size=256, region=32)
    labels = [ds.spec(i).label for i in range(len(ds))]
    assert labels == [i % 2 for i in range(200)]
    assert sum(labels) == 100


@pytest.mark.parametrize("size, region", [(256, 32), ((128, 320), 32), (2048, 256)])
def test_marks_in_different_regions_and_columns(size, region):
    for i in range(40):
        spec = sample_context_task(1, i, size, region)
        (cr, cc), (sr, sc) = spec.region_of(spec.circle), spec.region_of(spec.square)
        assert cc != sc  # different columns, so different regions
        rows, cols = spec.grid
        assert 0 <= cr < rows and 0 <= sr < rows and 0 <= cc < cols and 0 <= sc < cols
        half = spec.mark_size // 2
        for y, x in (spec.circle, spec.square):  # each mark wholly inside its region
            assert (y - half) // region == (y - half + spec.mark_size - 1) // region
            assert (x - half) // region == (x - half + spec.mark_size - 1) // region


def test_label_is_circle_left_of_square_in_the_pixels():
    for i in range(20):
        spec = sample_context_task(2, i, 256, 32)
        image = render_context_task(spec)
        assert image.shape == (3, 256, 256) and image.dtype == np.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        left = _centre_x(image, spec.circle_rgb) < _centre_x(image, spec.square_rgb)
        assert spec.label == int(left)
        assert abs(_centre_x(image, spec.circle_rgb) - (spec.circle[1] - 0.5)) <= 1.0


@pytest.mark.parametrize("index", range(6))
def test_swapped_pair_has_the_same_regions_and_the_opposite_label(index):
    """The proof that a bag of regions cannot solve the task."""
    spec = sample_context_task(5, index, 256, 32)
    swapped = swap_marks(spec)
    assert swapped.label == 1 - spec.label
    a, b = render_context_task(spec), render_context_task(swapped)
    assert not np.array_equal(a, b)
    regions_a, regions_b = _regions(a, 32), _regions(b, 32)
    assert sorted(regions_a) == sorted(regions_b)  # identical multiset of region tiles
    assert regions_a != regions_b  # ... in a different arrangement
    assert swap_marks(swapped) == spec


def test_swapped_pair_gives_identical_region_only_model_output():
    from xt_plugins.models import create_model

    spec = sample_context_task(6, 1, 128, 32, mark_size=16)
    images = torch.stack(
        [torch.from_numpy(render_context_task(s)) for s in (spec, swap_marks(spec))]
    )
    torch.manual_seed(0)
    model = create_model(
        "convnext_tiny",
        "none",
        region_size=32,
        num_classes=2,
        context_pool=1,
        dims=(16, 32, 64, 128),
        depths=(1, 1, 1, 1),
    ).eval()
    with torch.no_grad():
        logits = model(images)
    torch.testing.assert_close(logits[0], logits[1], atol=1e-5, rtol=1e-5)


def test_texture_does_not_depend_on_the_label():
    # Textures are drawn independently of the label: image statistics do not differ by class.
    means = {0: [], 1: []}
    for i in range(200):
        spec = sample_context_task(0, i, 128, 32)
        image = render_context_task(spec)
        means[spec.label].append(image.mean())
    diff = abs(np.mean(means[0]) - np.mean(means[1]))
    spread = np.std(means[0] + means[1]) / np.sqrt(100)
    assert diff < 4 * spread
    pixels = np.concatenate(
        [render_context_task(sample_context_task(0, i, 128, 32)).ravel() for i in range(20)]
    )
    assert abs(pixels.mean() - TEXTURE_MEAN) < 0.02
    assert abs(pixels.std() - TEXTURE_STD) < 0.02


def test_dataset_normalize_and_errors():
    ds = ContextTaskDataset(4, seed=0, size=(64, 128), region=32, normalize=True)
    image, label = ds[3]
    assert image.shape == (3, 64, 128) and label == 1
    raw = render_context_task(ds.spec(3))
    torch.testing.assert_close(image, torch.from_numpy((raw - TEXTURE_MEAN) / TEXTURE_STD))
    with pytest.raises(IndexError):
        ds[4]
    with pytest.raises(ValueError, match="multiple of the region size"):
        ContextTaskDataset(4, size=100, region=32)
    with pytest.raises(ValueError, match="2 region columns"):
        ContextTaskDataset(4, size=(64, 32), region=32)
    with pytest.raises(ValueError, match="mark_size"):
        sample_context_task(0, 0, 128, 32, mark_size=20)


# ---------------------------------------------------------------------------- training
def _benchmark():
    path = REPO / "benchmarks" / "context_task.py"
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location("_context_task_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_context_encoder_solves_it_and_region_only_model_does_not(tmp_path):
    """A shortened benchmark: a regression in context flow (positions, fusion) fails here."""
    bench = _benchmark()
    cfg = bench.Config(
        size=(64, 128),
        steps=100,
        pretrain_steps=60,
        test_size=128,
        eval_every=0,
        threads=torch.get_num_threads(),
    )
    weights = tmp_path / "region.pt"
    pre = bench.pretrain_region_encoder(cfg, weights)
    assert pre["region_accuracy_last10"] > 0.8
    none = bench.train_context("none", cfg, weights)
    hyper = bench.train_context("hyper", cfg, weights)
    assert none["accuracy"] <= 0.65, none
    assert hyper["accuracy"] >= 0.8, hyper
