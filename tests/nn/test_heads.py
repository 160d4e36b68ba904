"""Point-detection heads: Gaussian targets, focal loss, peak finding, decoder shapes."""

import math

import numpy as np
import pytest
import torch

from xt_plugins.nn.heads import (
    PointDetector,
    PyramidDecoder,
    find_peaks,
    gaussian_heatmap,
    heatmap_focal_loss,
)

from ..conftest import tiny_model


def test_gaussian_heatmap_is_one_exactly_at_centres():
    hm = gaussian_heatmap(np.array([[3, 4], [10.7, 2.2], [40, 40]]), (16, 12), sigma=1.5)
    assert hm.shape == (16, 12) and hm.dtype == np.float32
    assert np.argwhere(hm == 1.0).tolist() == [[3, 4], [10, 2]]  # floored; off-grid dropped
    assert hm[3, 5] == pytest.approx(math.exp(-1 / (2 * 1.5**2)))
    assert hm.min() == 0.0 and hm.max() == 1.0
    assert gaussian_heatmap(np.zeros((0, 2)), (4, 4)).sum() == 0


def test_focal_loss_prefers_the_right_heatmap():
    target = torch.from_numpy(gaussian_heatmap(np.array([[5, 5]]), (12, 12)))[None, None]
    good = torch.logit(target.clamp(1e-4, 1 - 1e-4))
    bad = torch.zeros_like(good)
    assert heatmap_focal_loss(good, target) < heatmap_focal_loss(bad, target) / 10
    # no centre at all: the loss is the negatives' only, normalised by 1
    empty = torch.zeros(1, 1, 8, 8)
    assert torch.isfinite(heatmap_focal_loss(bad[..., :8, :8], empty))


def test_find_peaks_suppresses_neighbours():
    hm = torch.zeros(2, 1, 10, 10)
    hm[0, 0, 2, 3] = 0.9
    hm[0, 0, 2, 4] = 0.8  # neighbour of a stronger peak: suppressed
    hm[0, 0, 7, 7] = 0.6
    hm[0, 0, 9, 0] = 0.2  # below threshold
    (r, c, s), (r1, _, _) = find_peaks(hm, threshold=0.5)
    assert sorted(zip(r.tolist(), c.tolist(), strict=True)) == [(2, 3), (7, 7)]
    assert s.max() == pytest.approx(0.9) and r1.numel() == 0


@pytest.mark.parametrize("out_stride", [4, 2])
def test_point_detector_output_grid_on_odd_sizes(out_stride):
    encoder = tiny_model("convnext_tiny", "none", region_size=64, in_chans=2)
    det = PointDetector(encoder, decoder_channels=8, out_stride=out_stride).eval()
    with torch.no_grad():
        out = det(torch.randn(1, 2, 150, 97))
    size = (math.ceil(150 / out_stride), math.ceil(97 / out_stride))
    assert set(out) == {"heatmap", "vessel", "fishing", "length"}
    assert all(tuple(v.shape) == (1, 1, *size) for v in out.values())
    # the heatmap starts at the 1 % prior everywhere-ish (bias trick)
    assert out["heatmap"].sigmoid().mean() < 0.1


def test_pyramid_decoder_rejects_wrong_levels():
    dec = PyramidDecoder([8, 16, 32, 64], channels=8)
    with pytest.raises(ValueError, match="4 pyramid levels"):
        dec([torch.zeros(1, 8, 4, 4)])
    with pytest.raises(ValueError, match="out_stride"):
        PyramidDecoder([8], out_stride=8)
