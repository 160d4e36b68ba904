"""Blended dense windows: seam-free, close to a whole-image pass, tile by tile, each object once."""

import numpy as np
import pytest
import torch
from torch import nn

from xt_plugins.infer.dense import WindowPlan, _Blender, blend_weights, check_blend, predict_windows


class ArraySource:
    """A boundless (C, H, W) array source with an optional validity mask."""

    def __init__(self, image: np.ndarray, valid: np.ndarray | None = None):
        self.image = image.astype(np.float32)
        self.valid = np.ones(image.shape[1:], bool) if valid is None else valid
        self.shape = image.shape

    def read_with_mask(self, y: int, x: int, h: int, w: int):
        c, height, width = self.shape
        out = np.zeros((c, h, w), np.float32)
        ok = np.zeros((h, w), bool)
        ys, xs = max(y, 0), max(x, 0)
        ye, xe = min(y + h, height), min(x + w, width)
        if ys < ye and xs < xe:
            out[:, ys - y : ye - y, xs - x : xe - x] = self.image[:, ys:ye, xs:xe]
            ok[ys - y : ye - y, xs - x : xe - x] = self.valid[ys:ye, xs:xe]
        return out, ok


class ArrayWriter:
    """Collects ``write(y, x, block)`` into an array (clipped like the GeoTIFF writer)."""

    def __init__(self, channels: int, h: int, w: int):
        self.data = np.full((channels, h, w), -1.0, np.float32)
        self.calls: list[tuple[int, int]] = []

    def write(self, y: int, x: int, block: np.ndarray) -> None:
        h = min(block.shape[1], self.data.shape[1] - y)
        w = min(block.shape[2], self.data.shape[2] - x)
        self.data[:, y : y + h, x : x + w] = block[:, :h, :w]
        self.calls.append((y, x))


def _smooth_image(h: int, w: int, c: int = 2) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.stack([np.sin(yy / 37.0 + k) * np.cos(xx / 53.0 - k) for k in range(c)])


def _run(source, plan, fn, channels, blend, **kw):
    _, h, w = source.shape
    writer = ArrayWriter(channels, *plan.output_shape(h, w))
    rows = predict_windows(
        source, plan, fn, writer, channels=channels, progress=False, blend=blend, **kw
    )
    return writer.data, rows, writer


@pytest.mark.parametrize(
    "plan",
    [
        WindowPlan(16, 4, 1),
        WindowPlan(16, 3, 1),
        WindowPlan(16, 4, 1, stride=4),
        WindowPlan(8, 5, 2),
    ],
)
def test_constant_model_gives_an_exactly_constant_map(plan):
    source = ArraySource(_smooth_image(77, 101))
    c = np.float32(0.3141592)

    def const(x):
        s = plan.stride
        return torch.full((x.shape[0], 3, x.shape[2] // s, x.shape[3] // s), float(c)), None

    out, _, _ = _run(source, plan, const, 3, "hann")
    assert np.isfinite(out).all()
    assert (out == c).all()  # exactly: no seam, no rounding step at window borders


def test_weights_are_a_partition_of_unity_and_one_at_the_border():
    w = blend_weights(80, 16)  # window 80 cells, windows 48 apart: overlap 32
    assert (w[32:48] == 1.0).all() and 0 < w[0] < 0.01 and w[31] < 1.0 and w[-1] == w[0]
    np.testing.assert_allclose(w[48:] + w[:32], 1.0, atol=1e-12)  # the next window's ramp
    edge = blend_weights(80, 16, lead=False)
    assert (edge[:48] == 1.0).all() and edge[-1] < 0.01  # border side kept at 1
    assert check_blend("cosine") == "hann" and check_blend(None) == "none"
    with pytest.raises(ValueError, match="blend must be"):
        check_blend("gauss")


def test_blended_map_matches_a_whole_image_pass_on_a_smooth_input():
    """A CNN (receptive field 21 px, replicate padding) on a smooth image, windows of 64 px.

    Measured (16 px from the image border, where windows read zeros beyond it): max
    |blend - whole| = 6.4e-4, mean 7.0e-5. The centre crop is exact here (the receptive field
    fits in the overlap); blending trades that for seam-free maps of models whose output
    depends on the whole window (next test).
    """
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 8, 5, padding=2, padding_mode="replicate"),
        nn.Tanh(),
        nn.Conv2d(8, 8, 5, padding=2, padding_mode="replicate"),
        nn.Tanh(),
        nn.Conv2d(8, 1, 5, padding=6, dilation=3, padding_mode="replicate"),
    ).eval()
    image = _smooth_image(150, 190)
    with torch.no_grad():
        whole = net(torch.from_numpy(image).float()[None])[0].numpy()
    blended, _, _ = _run(ArraySource(image), WindowPlan(16, 4, 1), lambda x: (net(x), None), 1,
                         "hann")  # fmt: skip
    err = np.abs(blended - whole)[:, 16:-16, 16:-16]
    assert err.max() < 1e-3 and err.mean() < 1e-4


def test_blending_removes_the_seams_of_a_window_dependent_model():
    """Output = the window's mean (a stand-in for context): centre crops jump at tile borders."""
    yy, xx = np.mgrid[0:128, 0:256].astype(np.float64)
    source = ArraySource((xx / 256.0 + yy / 512.0)[None])
    plan = WindowPlan(16, 4, 1)

    def fn(x):
        return x.mean(dim=(1, 2, 3), keepdim=True).expand(-1, 1, *x.shape[-2:]), None

    cropped, _, _ = _run(source, plan, fn, 1, None)
    blended, _, _ = _run(source, plan, fn, 1, "hann")
    inner = (0, slice(32, -32), slice(32, -32))  # windows at the border also see zeros
    jump_crop = np.abs(np.diff(cropped[inner], axis=1)).max()
    jump_blend = np.abs(np.diff(blended[inner], axis=1)).max()
    assert jump_crop > 0.1  # a step of one tile's worth of the ramp
    assert jump_blend < jump_crop / 10


def test_nodata_stays_nan_and_writing_is_tile_by_tile():
    image = _smooth_image(96, 200)
    valid = np.ones((96, 200), bool)
    valid[:, 150:] = False
    source = ArraySource(image, valid)
    plan = WindowPlan(16, 4, 1)  # step 32: 3 x 7 tiles
    calls = []

    def fn(x):
        calls.append(len(calls))
        return x[:, :1] * 0 + 0.5, None

    out, _, writer = _run(source, plan, fn, 1, "hann")
    assert (out[0, :, :150] == 0.5).all() and np.isnan(out[0, :, 150:]).all()
    assert len(writer.calls) == 3 * 7 and len(set(writer.calls)) == 21
    # the first row of tiles is written before the last row of windows has run
    assert writer.calls[:7] == [(0, 32 * b) for b in range(7)]
    blender = _Blender(plan, 96 * 40, 200, 1, ArrayWriter(1, 96 * 40, 200))
    peak = 0
    for t in range(blender.n_rows * blender.n_cols):
        blender.add(t, np.ones((1, 64, 64)), np.ones((64, 64), bool))
        blender.flush(t + 1)
        peak = max(peak, len(blender.open))
    assert peak <= (2 * blender.k + 1) * blender.n_cols + 1  # a few rows of tiles, not the map
    assert not blender.open


def test_detections_once_across_window_borders_with_blending():
    image = np.zeros((1, 90, 130), np.float32)
    points = [(5, 5), (31, 31), (32, 64), (47, 95), (80, 127), (63, 10)]
    for r, c in points:
        image[0, r, c] = 1.0
    source = ArraySource(image)
    plan = WindowPlan(16, 4, 1)

    def fn(x):
        return x[:, :1], x

    def detect(raw, valid):
        out = []
        for b in range(raw.shape[0]):
            rows, cols = torch.nonzero(raw[b, 0] > 0.5, as_tuple=True)
            out.append({"row": rows.float() + 0.5, "col": cols.float() + 0.5, "score": rows * 0.0})
        return out

    _, rows, _ = _run(source, plan, fn, 1, "hann", detect_fn=detect)
    found = sorted((int(d["row"]), int(d["col"])) for d in rows)
    assert found == sorted(points)
