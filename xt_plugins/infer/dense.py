"""Dense windowed prediction: overlapping windows, centre crops written tile by tile.

A dense model (segmentation, point detection) runs on windows of ``n x n`` regions that
overlap by ``overlap`` regions on each side; only each window's centre part (``step`` pixels)
is kept and written with the writer's ``write(y, x, block)``, so the image's dense output is
never held in memory. Detections are found on the whole window (so NMS sees across tile
borders) and kept when they fall in the window's centre part: each object is reported once.

.. versionadded:: 0.2
   Moved out of ``xt_plugins.torchgeo.predict``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["WindowPlan", "predict_windows"]

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
) -> list[dict[str, Any]]:
    """Run a dense model window by window and write the centre parts.

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

    Returns:
        The detections that fall in their window's centre part, image pixels (``row``,
        ``col``) plus every other field ``detect_fn`` gave, as Python floats.
    """
    from tqdm.auto import tqdm

    _, height, width = (int(s) for s in source.shape)
    m, st, s = plan.margin // plan.stride, plan.step // plan.stride, plan.stride
    tiles = plan.tiles(height, width)
    rows: list[dict[str, Any]] = []
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
                empty = np.full((channels, st, st), np.nan, np.float32)
                for y, x in group:
                    writer.write(y // s, x // s, empty)
                bar.update(len(group))
                continue
            x_in = torch.from_numpy(np.stack([im for im, _ in reads])).to(device)
            with torch.inference_mode():
                probs, raw = model_fn(x_in)
                probs = probs.float().cpu()  # (B, C, h, w)
                dets = detect_fn(raw, valid.to(device)) if detect_fn is not None else None
            probs = torch.where(cells, probs, torch.full_like(probs, float("nan")))
            for b, (y, x) in enumerate(group):
                writer.write(y // s, x // s, probs[b, :, m : m + st, m : m + st].numpy())
                if dets is not None:
                    rows.extend(_keep_centre(dets[b], y, x, plan, height, width))
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
