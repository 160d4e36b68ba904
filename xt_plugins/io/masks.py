"""Validity masks: tissue masks of slides and nodata validity grids of rasters, in one place.

- :func:`tissue_mask` / :func:`region_tissue_fraction` / :func:`slide_region_mask`: tissue from
  a low-resolution level of a slide (Otsu on HSV saturation, small objects and holes removed),
  each region of the model's grid gets its tissue fraction, and only regions with tissue are
  used.
- :func:`validity_grid`: the valid-data mask of a raster file (nodata, NaN, internal masks) at
  a bounded resolution, cached per file version.

Both give the inference engine and the samplers a region/window validity without reading the
image at full resolution.

.. versionadded:: 0.2
   Moved here from ``xt_plugins.monai.wsi`` and ``xt_plugins.torchgeo.samplers`` (still
   importable there).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import nodata_mask
from .slide import SlideSource

__all__ = [
    "MASK_MAX_SIDE",
    "NoTissueError",
    "SlideTooSmallError",
    "TissueMask",
    "region_tissue_fraction",
    "slide_region_mask",
    "tissue_mask",
    "validity_grid",
]

#: Longest side (pixels) of the validity grid read per raster file; larger files are decimated.
MASK_MAX_SIDE = 4096


class NoTissueError(ValueError):
    """The tissue mask of a slide is empty (blank slide, or a threshold that is too strict)."""


class SlideTooSmallError(ValueError):
    """A slide is smaller than one region at the requested resolution."""


# ---------------------------------------------------------------------------- tissue
@dataclass(frozen=True, eq=False)
class TissueMask:
    """A low-resolution tissue mask of a slide.

    Attributes:
        mask: (h, w) bool, True on tissue; covers the whole level-0 extent.
        thumbnail: (h, w, 3) uint8 image the mask was computed from.
        downsample: level-0 pixels per mask pixel, (y, x).
        threshold: saturation threshold that was used.
    """

    mask: np.ndarray
    thumbnail: np.ndarray
    downsample: tuple[float, float]
    threshold: float

    @property
    def fraction(self) -> float:
        """Tissue fraction of the whole slide."""
        return float(self.mask.mean())


def _saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation (max - min) / max of (h, w, 3) uint8 pixels, 0 for black; float32."""
    hi = rgb.max(axis=-1).astype(np.float32)
    lo = rgb.min(axis=-1).astype(np.float32)
    return np.divide(hi - lo, hi, out=np.zeros_like(hi), where=hi > 0)


def tissue_mask(
    source: SlideSource,
    *,
    max_side: int = 2048,
    min_saturation: float = 0.05,
    min_object_um2: float = 2500.0,
) -> TissueMask:
    """Tissue mask from a low-resolution level: Otsu on HSV saturation, small specks removed.

    Glass, background and unscanned (transparent) areas have almost no saturation; stained
    tissue has plenty. The Otsu threshold is floored at ``min_saturation`` so that a blank
    slide yields an empty mask rather than a mask of noise.

    Args:
        source: the slide.
        max_side: longest side of the thumbnail the mask is computed on.
        min_saturation: lowest saturation threshold (HSV saturation in [0, 1]).
        min_object_um2: tissue pieces (and holes) smaller than this area in square microns are
            removed (filled); 16 mask pixels when the slide has no mpp.

    Returns:
        The :class:`TissueMask`.

    .. versionadded:: 0.1
    """
    from skimage.filters import threshold_otsu
    from skimage.morphology import remove_small_holes, remove_small_objects

    thumb = source.thumbnail(max_side)  # (h, w, 3) uint8
    h0, w0 = source.level0_shape
    downsample = (h0 / thumb.shape[0], w0 / thumb.shape[1])
    saturation = _saturation(thumb)  # (h, w) in [0, 1]
    threshold = min_saturation
    if float(np.ptp(saturation)) > 1e-3:
        threshold = max(float(threshold_otsu(saturation)), min_saturation)
    mask = saturation > threshold
    if source.slide_mpp is not None:
        px_um2 = downsample[0] * downsample[1] * source.slide_mpp**2
        max_size = max(1, int(min_object_um2 / px_um2))
    else:
        max_size = 16
    mask = remove_small_objects(mask, max_size=max_size)
    mask = remove_small_holes(mask, max_size=max_size)
    return TissueMask(mask, thumb, downsample, threshold)


def _edges(n: int, step: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Mask-pixel edges of ``n`` cells of ``step`` mask pixels: (start, stop), stop > start."""
    start = np.floor(np.arange(n) * step).astype(np.int64)
    stop = np.maximum(np.floor(np.arange(1, n + 1) * step).astype(np.int64), start + 1)
    return np.clip(start, 0, size), np.clip(stop, 0, size), stop - start


def region_tissue_fraction(tissue: TissueMask, source: SlideSource, region_size: int) -> np.ndarray:
    """Tissue fraction of every region of the model's grid over ``source``.

    Args:
        tissue: the slide's tissue mask.
        source: the slide at the model's resolution (its ``scale`` maps pixels to level 0).
        region_size: region side in pixels at the source's resolution.

    Returns:
        (rows, cols) float32 in [0, 1], rows = ceil(H / region_size); parts of a region beyond
        the slide count as no tissue.

    .. versionadded:: 0.1
    """
    rows = math.ceil(source.height / region_size)
    cols = math.ceil(source.width / region_size)
    mask = tissue.mask
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    integral[1:, 1:] = mask.cumsum(0).cumsum(1)
    step = region_size * source.scale  # level-0 pixels per region side
    y0, y1, hy = _edges(rows, step / tissue.downsample[0], mask.shape[0])
    x0, x1, wx = _edges(cols, step / tissue.downsample[1], mask.shape[1])
    tissue_px = (
        integral[y1][:, x1] - integral[y0][:, x1] - integral[y1][:, x0] + integral[y0][:, x0]
    )  # (rows, cols)
    area = hy[:, None] * wx[None, :]
    return np.clip(tissue_px / area, 0.0, 1.0).astype(np.float32)


def slide_region_mask(
    source: SlideSource,
    region_size: int,
    *,
    min_tissue: float = 0.1,
    tissue: TissueMask | None = None,
    **tissue_kwargs: Any,
) -> tuple[np.ndarray, np.ndarray, TissueMask]:
    """Regions with tissue: ``(mask (rows, cols) bool, fractions (rows, cols), tissue mask)``.

    Args:
        source: the slide at the model's resolution.
        region_size: region side in pixels.
        min_tissue: a region is used when its tissue fraction is at least this.
        tissue: a tissue mask already computed (else computed here with ``tissue_kwargs``).
        **tissue_kwargs: options of :func:`tissue_mask`.

    Raises:
        SlideTooSmallError: if the slide is smaller than one region (checked after the tissue
            mask, so that a slide that cannot be read says so first).
        NoTissueError: if no region has enough tissue.

    .. versionadded:: 0.1
    """
    tissue = tissue if tissue is not None else tissue_mask(source, **tissue_kwargs)
    if min(source.height, source.width) < region_size:
        raise SlideTooSmallError(
            f"{source.path}: the slide is {source.width} x {source.height} px at "
            f"{source.mpp:.4g} um/px, smaller than one {region_size}-px region; too little "
            "tissue for the model (use a finer mpp or a smaller region size)"
        )
    fractions = region_tissue_fraction(tissue, source, region_size)
    mask = fractions >= min_tissue
    if not mask.any():
        raise NoTissueError(
            f"{source.path}: no tissue found (no {region_size}-px region has {min_tissue:.0%} "
            f"tissue; {tissue.fraction:.1%} of the thumbnail passed the saturation threshold "
            f"{tissue.threshold:.3f})"
        )
    return mask, fractions, tissue


def validity_grid(
    path: str | os.PathLike[str], nodata: float | None = None, max_side: int = MASK_MAX_SIDE
) -> tuple[np.ndarray, tuple[float, float]]:
    """Valid-data mask of a raster file at (at most) ``max_side`` pixels on its longest side.

    A pixel is invalid where every band equals nodata (the file's, or ``nodata``), or any
    band is NaN, or the file's internal mask says so; decimated reads sample the nearest pixel.

    Args:
        path: raster file.
        nodata: nodata value overriding the file's.
        max_side: longest side of the returned mask.

    Returns:
        ``(mask, factor)``: (h, w) bool array, True on data, and the file pixels per mask pixel
        along each axis (``(fy, fx)`` floats; 1.0 when read at full resolution).

    Raises:
        xt_plugins.io.ImageReadError: naming the file if it cannot be read.

    The result is cached per file version (path, modification time), read-only.
    """
    p = str(path)
    return _validity_grid(p, os.stat(p).st_mtime_ns, nodata, max_side)


@functools.lru_cache(maxsize=8)
def _validity_grid(
    path: str, mtime_ns: int, nodata: float | None, max_side: int
) -> tuple[np.ndarray, tuple[float, float]]:
    import rasterio
    from rasterio.enums import MaskFlags

    from .errors import ImageReadError
    from .raster import RasterSource

    with RasterSource(path, nodata=nodata) as src:
        _, height, width = src.shape
        thumb = src.thumbnail(max_side=min(max_side, max(height, width)), resampling="nearest")
    data = np.moveaxis(thumb, -1, 0)  # (C, h, w)
    try:
        with rasterio.open(path) as ds:
            values = [nodata] * ds.count if nodata is not None else list(ds.nodatavals)
            mask = nodata_mask(data, values)
            flags = ds.mask_flag_enums[0]
            if MaskFlags.per_dataset in flags or MaskFlags.alpha in flags:
                inner = ds.read_masks(1, out_shape=data.shape[1:]) > 0
                mask = inner if mask is None else mask & inner
    except rasterio.errors.RasterioError as e:
        raise ImageReadError(f"{path}: reading the validity mask failed: {e}") from e
    if mask is None:
        mask = np.ones(data.shape[1:], dtype=bool)
    mask.setflags(write=False)
    return mask, (height / mask.shape[0], width / mask.shape[1])
