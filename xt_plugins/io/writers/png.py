"""PNG heatmaps of probability maps, alone (RGBA) or blended over a thumbnail.

.. versionadded:: 0.1
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._common import PathLike, _prepare_parent

__all__ = ["save_heatmap_png"]


def _resize_prob(prob: np.ndarray, size: tuple[int, int], resample: str) -> np.ndarray:
    """Resize a (h, w) float map with NaN holes to ``size`` (H, W), keeping NaN as NaN."""
    from PIL import Image

    height, width = size
    if prob.shape == (height, width):
        return prob
    if resample == "nearest":
        img = Image.fromarray(prob.astype(np.float32), "F")
        return np.asarray(img.resize((width, height), Image.Resampling.NEAREST))
    if resample != "bilinear":
        raise ValueError(f"resample must be 'nearest' or 'bilinear', got {resample!r}")
    valid = np.isfinite(prob)
    values = Image.fromarray(np.where(valid, prob, 0).astype(np.float32), "F")
    weight = Image.fromarray(valid.astype(np.float32), "F")
    v = np.asarray(values.resize((width, height), Image.Resampling.BILINEAR))
    m = np.asarray(weight.resize((width, height), Image.Resampling.BILINEAR))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = v / m
    out[m < 0.5] = np.nan
    return out


def save_heatmap_png(
    prob: np.ndarray,
    path: PathLike,
    background: np.ndarray | None = None,
    alpha: float = 0.5,
    cmap: Any = "jet",
    resample: str = "nearest",
) -> Path:
    """Save a probability map as a PNG, alone or blended over a thumbnail.

    Args:
        prob: (h, w) floats in [0, 1]; NaN where there is no prediction.
        path: output PNG.
        background: (H, W, 3) uint8 image (e.g. a slide thumbnail) to blend over; the heatmap
            is resized to it. Without it the PNG is RGBA at the heatmap's size.
        alpha: heatmap opacity over the background.
        cmap: matplotlib colormap name or object.
        resample: ``"nearest"`` (blocky, exact cells) or ``"bilinear"`` resizing.

    Returns:
        The path written. NaN cells are transparent (show the background).

    .. versionadded:: 0.1
    """
    import matplotlib
    from PIL import Image

    prob = np.asarray(prob, dtype=np.float32)
    if prob.ndim != 2:
        raise ValueError(f"prob must be (h, w), got shape {prob.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    colormap = matplotlib.colormaps[cmap] if isinstance(cmap, str) else cmap
    lut = colormap(np.linspace(0.0, 1.0, 256), bytes=True)[:, :3]  # (256, 3) uint8
    if background is not None:
        bg = np.asarray(background)
        if bg.ndim == 2:
            bg = np.repeat(bg[..., None], 3, axis=-1)
        if bg.ndim != 3 or bg.shape[-1] not in (3, 4):
            raise ValueError(f"background must be (H, W, 3) uint8, got shape {bg.shape}")
        bg = bg[..., :3].astype(np.uint8, copy=False)
        prob = _resize_prob(prob, bg.shape[:2], resample)
    valid = np.isfinite(prob)  # (H, W)
    index = np.rint(np.clip(np.where(valid, prob, 0), 0, 1) * 255).astype(np.uint8)
    colors = lut[index]  # (H, W, 3)
    if background is None:
        rgba = np.concatenate([colors, (valid * np.uint8(255))[..., None]], axis=-1)
        image = Image.fromarray(rgba.astype(np.uint8), "RGBA")
    else:
        blend = bg * (1.0 - alpha) + colors * alpha  # (H, W, 3) float
        out = np.where(valid[..., None], np.rint(blend), bg).astype(np.uint8)
        image = Image.fromarray(out, "RGB")
    out_path = _prepare_parent(path)
    image.save(out_path, format="PNG")
    return out_path
