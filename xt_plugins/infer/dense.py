"""Dense windowed prediction: overlapping windows, centre crops or blended, written tile by tile.

A dense model (segmentation, point detection) runs on windows of ``n x n`` regions that
overlap by ``overlap`` regions on each side; by default only each window's centre part
(``step`` pixels) is kept and written with the writer's ``write(y, x, block)``; with
``blend="hann"`` overlapping outputs are averaged with Hann-tapered weights instead (no seams).
Either way the image's dense output is never held in memory. Detections are found on the
whole window (so NMS sees across tile borders) and kept when they fall in the window's centre
part: each object is reported once.

.. versionadded:: 0.2
   Moved out of ``xt_plugins.torchgeo.predict``; ``blend``, ``precision`` and ``tta``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["BLENDS", "WindowPlan", "blend_weights", "check_blend", "predict_windows"]

#: ``model_fn(x (B, C, H, W)) -> (probabilities (B, C_out, H / s, W / s), raw outputs)``.
DenseFn = Callable[[Tensor], tuple[Tensor, Any]]
#: ``detect_fn(raw outputs, valid (B, 1, H, W)) -> per window a dict of (N,) tensors`` with
#: ``row`` and ``col`` in window pixels.
DetectFn = Callable[[Any, Tensor], list[Mapping[str, Tensor]]]


@dataclass(frozen=True)
class WindowPlan:
    """Geometry of overlapping windows.

    Args:
        region: region side in pixels.
        window_regions: window side in regions.
        overlap_regions: overlap on each side in regions.
        stride: input pixels per output cell (4 for the point detector, 1 for segmentation).

    Raises:
        ValueError: if the windows leave no centre part, or a size is not positive.
    """

    region: int
    window_regions: int
    overlap_regions: int
    stride: int = 1

    def __post_init__(self) -> None:
        if self.window_regions < 1 or self.overlap_regions < 0 or self.step <= 0:
            raise ValueError(
                f"window of {self.window_regions} regions with {self.overlap_regions} regions "
                "of overlap on each side leaves no centre part: use window_regions > "
                "2 * overlap_regions"
            )
        if self.stride < 1 or self.step % self.stride or self.margin % self.stride:
            raise ValueError(f"output stride {self.stride} must divide the region size")

    @property
    def window(self) -> int:
        """Window side in pixels."""
        return self.window_regions * self.region

    @property
    def margin(self) -> int:
        """Overlap on each side in pixels (the part of a window that is not written)."""
        return self.overlap_regions * self.region

    @property
    def step(self) -> int:
        """Centre part (and distance between windows) in pixels."""
        return self.window - 2 * self.margin

    def tiles(self, height: int, width: int) -> list[tuple[int, int]]:
        """Top-left pixel of every centre part covering an ``height x width`` image."""
        return [(y, x) for y in range(0, height, self.step) for x in range(0, width, self.step)]

    def output_shape(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the output grid."""
        return math.ceil(height / self.stride), math.ceil(width / self.stride)


def _batched(items: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


#: ``blend`` values: None / "none" / "crop" (hard centre crops), "hann" / "cosine" (weighted).
BLENDS = ("none", "hann")
_BLEND_ALIASES = {"": "none", "none": "none", "crop": "none", "centre": "none",
                  "center": "none", "hann": "hann", "cosine": "hann", "cos": "hann"}  # fmt: skip


def check_blend(blend: str | None) -> str:
    """The canonical blend mode: ``"none"`` (centre crops) or ``"hann"``.

    Raises:
        ValueError: an unknown mode.
    """
    name = _BLEND_ALIASES.get("none" if blend is None else str(blend).strip().lower())
    if name is None:
        raise ValueError(f"blend must be 'none' or 'hann' (alias 'cosine'), got {blend!r}")
    return name


def blend_weights(size: int, ramp: int, lead: bool = True, trail: bool = True) -> np.ndarray:
    """1-D window weights (size,) float64: Hann (cos\u00b2) ramps over ``2 * ramp`` cells.

    The weight rises as ``sin\u00b2(pi / 2 * (t + 0.5) / (2 ramp))`` over the first
    ``2 * ramp`` cells and falls symmetrically over the last ones, 1 between. Two windows
    ``size - 2 * ramp`` apart overlap by ``2 * ramp`` cells, where one's falling ramp and the
    other's rising ramp sum to 1 (sin\u00b2 + cos\u00b2). ``lead`` / ``trail`` False keep the
    weight at 1 on that side: the side facing the image border, where no window overlaps.
    """
    t = np.arange(size, dtype=np.float64)
    rise = np.ones(size)
    if ramp > 0:
        rise = np.where(t < 2 * ramp, np.sin(np.pi / 2 * (t + 0.5) / (2 * ramp)) ** 2, 1.0)
    up = rise if lead else np.ones(size)
    down = rise[::-1] if trail else np.ones(size)
    return np.minimum(up, down)


class _Blender:
    """Weighted sums of window outputs over the tiles still open; finished tiles written.

    Tile (a, b) is the ``st x st`` output block at the a-th row, b-th column of centre parts
    (the blocks the centre-crop mode writes). Windows arrive in row-major tile order; a tile is
    final once the last window that overlaps it has been added, so the open tiles are about
    ``2 k + 1`` rows of tiles (``k = ceil(margin / step)``, 1 for the usual overlaps): memory is
    ``(channels + 1) x 8 bytes`` per output cell of those rows, never the whole map. Sums are
    float64, so a constant output comes back exactly constant after the float32 cast.
    """

    def __init__(self, plan: WindowPlan, height: int, width: int, channels: int, writer: Any):
        self.s, self.writer, self.channels = plan.stride, writer, channels
        self.st, self.mc = plan.step // plan.stride, plan.margin // plan.stride
        self.wc = plan.window // plan.stride
        self.n_rows, self.n_cols = math.ceil(height / plan.step), math.ceil(width / plan.step)
        self.k = math.ceil(self.mc / self.st) if self.mc else 0
        self.open: dict[tuple[int, int], list[np.ndarray]] = {}
        self.next = 0  # next tile (row-major) to write

    def _weights(self, i: int, j: int) -> np.ndarray:
        wy = blend_weights(self.wc, self.mc, i > 0, i < self.n_rows - 1)
        wx = blend_weights(self.wc, self.mc, j > 0, j < self.n_cols - 1)
        return wy[:, None] * wx[None, :]  # (wc, wc)

    def add(self, tile: int, probs: np.ndarray, cells: np.ndarray) -> None:
        """Add window ``tile``'s outputs (C, wc, wc) where ``cells`` (wc, wc) is valid."""
        i, j = divmod(tile, self.n_cols)
        w = self._weights(i, j) * cells
        y0, x0 = i * self.st - self.mc, j * self.st - self.mc  # window origin, output cells
        for a in range(max(0, i - self.k), min(self.n_rows, i + self.k + 1)):
            for b in range(max(0, j - self.k), min(self.n_cols, j + self.k + 1)):
                ty, tx = a * self.st, b * self.st
                ys, ye = max(ty, y0), min(ty + self.st, y0 + self.wc)
                xs, xe = max(tx, x0), min(tx + self.st, x0 + self.wc)
                if ys >= ye or xs >= xe:
                    continue
                acc = self.open.get((a, b))
                if acc is None:
                    acc = self.open[(a, b)] = [
                        np.zeros((self.channels, self.st, self.st)),
                        np.zeros((self.st, self.st)),
                    ]
                win = (slice(ys - y0, ye - y0), slice(xs - x0, xe - x0))
                out = (slice(ys - ty, ye - ty), slice(xs - tx, xe - tx))
                acc[0][(slice(None), *out)] += probs[(slice(None), *win)] * w[win]
                acc[1][out] += w[win]

    def _last_window(self, tile: int) -> int:
        a, b = divmod(tile, self.n_cols)
        return min(a + self.k, self.n_rows - 1) * self.n_cols + min(b + self.k, self.n_cols - 1)

    def flush(self, processed: int) -> None:
        """Write the tiles whose windows are all among the first ``processed``."""
        total = self.n_rows * self.n_cols
        while self.next < total and (
            processed >= total or self._last_window(self.next) < processed
        ):
            a, b = divmod(self.next, self.n_cols)
            acc = self.open.pop((a, b), None)
            block = np.full((self.channels, self.st, self.st), np.nan, np.float32)
            if acc is not None:
                total_w = acc[1]
                np.divide(acc[0], total_w, out=block, where=total_w[None] > 0, casting="unsafe")
            self.writer.write(a * self.st, b * self.st, block)
            self.next += 1


def predict_windows(
    source: Any,
    plan: WindowPlan,
    model_fn: DenseFn,
    writer: Any,
    *,
    channels: int,
    detect_fn: DetectFn | None = None,
    batch: int = 1,
    device: torch.device | str = "cpu",
    progress: bool = True,
    name: str = "image",
    blend: str | None = None,
    precision: str = "32",
    tta: str | None = None,
) -> list[dict[str, Any]]:
    """Run a dense model window by window and write its outputs tile by tile.

    With ``blend=None`` each window's centre part is written as it is (hard centre crops).
    With ``blend="hann"`` (alias ``"cosine"``) every output cell is the weighted mean of all
    windows that cover it, with Hann-tapered weights (:func:`blend_weights`) that fall to
    near 0 over each window's overlap and stay 1 on the sides facing the image border, so no
    seam remains where windows meet; the weighted sums are kept only for the rows of tiles
    still open (bounded memory, see :class:`_Blender`). Detections are the same in both modes.

    Args:
        source: reads ``read_with_mask(y, x, h, w) -> (pixels (C, h, w), valid (h, w))``,
            boundless, with ``shape`` (C, H, W).
        plan: the window geometry.
        model_fn: dense model on a batch of windows (called under ``torch.inference_mode``).
        writer: ``write(y, x, block)`` of (channels, h, w) output blocks (output cells).
        channels: output channels of ``model_fn``'s probabilities.
        detect_fn: decodes detections of a batch of windows (None: no detections).
        batch: windows per forward pass.
        device: where the model runs.
        progress: show a progress bar over the windows.
        name: label of the progress bar.
        blend: None / ``"none"`` (centre crops) or ``"hann"`` / ``"cosine"`` (weighted).
        precision: ``"32"``, ``"bf16"`` or ``"16"`` (CUDA): autocast of ``model_fn``
            (:mod:`xt_plugins.infer.precision`); outputs are written as float32.
        tta: None or ``"flips"``: ``model_fn``'s outputs (probabilities and every tensor of the
            raw outputs) averaged over the four flips of each window, flipped back.

    Returns:
        The detections that fall in their window's centre part, image pixels (``row``,
        ``col``) plus every other field ``detect_fn`` gave, as Python floats.

    .. versionchanged:: 0.2
       ``blend``, ``precision`` and ``tta``.
    """
    from tqdm.auto import tqdm

    from .precision import check_precision, check_tta, run_model

    blend, tta = check_blend(blend), check_tta(tta)
    precision = check_precision(precision, device)
    _, height, width = (int(s) for s in source.shape)
    m, st, s = plan.margin // plan.stride, plan.step // plan.stride, plan.stride
    tiles = plan.tiles(height, width)
    blender = _Blender(plan, height, width, channels, writer) if blend == "hann" else None
    rows: list[dict[str, Any]] = []
    done = 0
    bar = tqdm(total=len(tiles), unit="window", desc=name, disable=not progress)
    try:
        for group in _batched(tiles, batch):
            reads = [
                source.read_with_mask(y - plan.margin, x - plan.margin, plan.window, plan.window)
                for y, x in group
            ]
            valid = torch.from_numpy(np.stack([v for _, v in reads]))[:, None].float()
            cells = torch.nn.functional.max_pool2d(valid, s) > 0 if s > 1 else valid > 0
            if not valid.any():
                if blender is None:
                    empty = np.full((channels, st, st), np.nan, np.float32)
                    for y, x in group:
                        writer.write(y // s, x // s, empty)
                else:
                    blender.flush(done + len(group))
                done += len(group)
                bar.update(len(group))
                continue
            x_in = torch.from_numpy(np.stack([im for im, _ in reads])).to(device)
            with torch.inference_mode():
                probs, raw = run_model(model_fn, x_in, precision, tta)
                probs = probs.float().cpu()  # (B, C, h, w)
                dets = detect_fn(raw, valid.to(device)) if detect_fn is not None else None
            if blender is None:
                probs = torch.where(cells, probs, torch.full_like(probs, float("nan")))
            for b, (y, x) in enumerate(group):
                if blender is None:
                    writer.write(y // s, x // s, probs[b, :, m : m + st, m : m + st].numpy())
                else:
                    blender.add(done + b, probs[b].double().numpy(), cells[b, 0].numpy())
                if dets is not None:
                    rows.extend(_keep_centre(dets[b], y, x, plan, height, width))
            done += len(group)
            if blender is not None:
                blender.flush(done)
            bar.update(len(group))
    finally:
        bar.close()
    return rows


def _keep_centre(
    det: Mapping[str, Tensor], y: int, x: int, plan: WindowPlan, height: int, width: int
) -> list[dict[str, Any]]:
    """Detections of one window that fall in its centre part, in image pixels."""
    r = det["row"].cpu().numpy() - plan.margin  # relative to the tile origin
    c = det["col"].cpu().numpy() - plan.margin
    keep = (r >= 0) & (r < plan.step) & (c >= 0) & (c < plan.step)
    rows, cols = r + y, c + x
    keep &= (rows < height) & (cols < width)
    fields = {k: v.cpu().numpy() for k, v in det.items() if k not in ("row", "col")}
    return [
        {
            "row": float(rows[i]),
            "col": float(cols[i]),
            **{k: v[i].item() for k, v in fields.items()},
        }
        for i in np.flatnonzero(keep)
    ]
