"""A TorchGeo sampler of windows aligned to xT's region grid, skipping windows without data.

.. versionadded:: 0.1
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import shapely
import torch
from torchgeo.datasets import GeoDataset
from torchgeo.samplers import GeoSampler

from ..io.masks import MASK_MAX_SIDE, validity_grid

__all__ = ["NestedRegionGeoSampler", "NestedWindow", "validity_grid"]


@dataclass(frozen=True)
class NestedWindow:
    """One window of a :class:`NestedRegionGeoSampler`.

    Attributes:
        index: row of the dataset index (the file / scene) it lies in.
        row: top pixel row relative to that row's top-left corner (a multiple of region_px).
        col: left pixel column (a multiple of region_px).
        height: window height in pixels.
        width: window width in pixels.
        valid_fraction: fraction of the window's pixels that are valid data (inside the file
            and the ROI, not nodata).
        geoslice: ``(slice(x0, x1, xres), slice(y0, y1, yres), slice(t0, t1))``.
    """

    index: int
    row: int
    col: int
    height: int
    width: int
    valid_fraction: float
    geoslice: tuple[slice, slice, slice]


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    h, w = (value, value) if isinstance(value, int | np.integer) else tuple(value)
    if int(h) != h or int(w) != w or h <= 0 or w <= 0:
        raise ValueError(f"{name} must be positive whole pixels, got {value!r}")
    return int(h), int(w)


class NestedRegionGeoSampler(GeoSampler):
    """Windows of ``window_px`` aligned to the region grid of each file, skipping empty ones.

    Every row of the dataset's index (a file, or a scene) gets its own region grid anchored at
    its top-left corner (``xmin, ymax`` of its footprint) with ``region_px`` regions at the
    dataset's resolution. Windows start at multiples of ``stride`` (a multiple of
    ``region_px``) and cover the whole footprint; the last row / column of windows may hang
    over the bottom / right edge (that part counts as invalid, as xT pads it). A window is
    kept when its valid fraction (pixels inside the footprint and ROI, not nodata) is at
    least ``min_valid``.

    Validity is read once per file from its nodata / mask (decimated to at most
    :data:`MASK_MAX_SIDE` pixels per side). Files in another CRS than the dataset, or index
    rows without a ``filepath``, use their footprint only.

    Args:
        dataset: any :class:`~torchgeo.datasets.GeoDataset` (e.g. a ``RasterDataset``).
        window_px: window size in pixels, ``size`` or ``(height, width)``; a multiple of
            ``region_px``.
        region_px: xT region side in pixels.
        stride: step between windows in pixels (default: ``window_px``); a multiple of
            ``region_px``.
        roi: region of interest (shapely polygon in the dataset's CRS).
        toi: time of interest (``pandas.Interval``).
        min_valid: smallest valid fraction of a kept window, in [0, 1] (a window with no
            valid pixel is never kept).
        shuffle: yield the windows in a new random order each epoch.
        length: windows per epoch (drawn at random with replacement; default: all, once).
        generator: random generator for ``shuffle`` / ``length``.

    Raises:
        ValueError: on sizes that are not multiples of ``region_px`` or a bad ``min_valid``.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        dataset: GeoDataset,
        window_px: int | tuple[int, int],
        region_px: int,
        stride: int | tuple[int, int] | None = None,
        roi: shapely.Polygon | None = None,
        toi: pd.Interval | None = None,
        min_valid: float = 0.5,
        *,
        shuffle: bool = False,
        length: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.window = _pair(window_px, "window_px")
        self.region = _pair(region_px, "region_px")[0]
        self.stride = self.window if stride is None else _pair(stride, "stride")
        for name, (h, w) in (("window_px", self.window), ("stride", self.stride)):
            if h % self.region or w % self.region:
                raise ValueError(
                    f"{name} {(h, w)} must be a multiple of region_px={self.region} so that "
                    "windows stay aligned to the region grid"
                )
        if not 0.0 <= min_valid <= 1.0:
            raise ValueError(f"min_valid must be in [0, 1], got {min_valid}")
        if length is not None and length <= 0:
            raise ValueError(f"length must be positive, got {length}")
        self.res = tuple(float(r) for r in dataset.res)
        self.min_valid = float(min_valid)
        self.roi = roi
        self.toi = toi
        self.shuffle = shuffle
        self.length = length
        self.generator = generator
        self.windows: list[NestedWindow] = self._make_windows(dataset)
        self._length = length if length is not None else len(self.windows)

    # ------------------------------------------------------------------------ windows
    def _make_windows(self, dataset: GeoDataset) -> list[NestedWindow]:
        index = dataset.index
        xres, yres = self.res
        out: list[NestedWindow] = []
        nodata = getattr(dataset, "nodata", None)
        for i in range(len(index)):
            interval = index.index[i]
            tmin, tmax = interval.left, interval.right
            if self.toi is not None:
                if not interval.overlaps(self.toi):
                    continue
                tmin, tmax = max(tmin, self.toi.left), min(tmax, self.toi.right)
            geom = index.geometry.iloc[i]
            if self.roi is not None and not geom.intersects(self.roi):
                continue
            xmin, ymin, xmax, ymax = geom.bounds
            height = max(1, round((ymax - ymin) / yres))
            width = max(1, round((xmax - xmin) / xres))
            path = index["filepath"].iloc[i] if "filepath" in index.columns else None
            valid = self._valid_cells(path, dataset, geom, (xmin, ymax), (height, width), nodata)
            out.extend(self._windows_of(i, valid, (height, width), (xmin, ymax), (tmin, tmax)))
        if not out:
            warnings.warn(
                f"NestedRegionGeoSampler: no window of {self.window} px has a valid fraction "
                f">= {self.min_valid} in {type(dataset).__name__} ({len(index)} index rows)",
                stacklevel=3,
            )
        return out

    def _valid_cells(
        self,
        path: Any,
        dataset: GeoDataset,
        geom: shapely.Geometry,
        origin: tuple[float, float],
        size: tuple[int, int],
        nodata: float | None,
    ) -> tuple[np.ndarray, tuple[float, float]]:
        """(h, w) validity of the footprint's pixel grid (maybe decimated) and its factor."""
        from rasterio.features import geometry_mask
        from rasterio.transform import from_origin

        height, width = size
        mask, factor = None, (1.0, 1.0)
        if isinstance(path, str) and self._same_grid(path, dataset, size):
            mask, factor = validity_grid(path, nodata)
        if mask is None:  # footprint only
            f = max(1.0, max(height, width) / MASK_MAX_SIDE)
            shape = (math.ceil(height / f), math.ceil(width / f))
            factor = (height / shape[0], width / shape[1])
            mask = np.ones(shape, dtype=bool)
        xres, yres = self.res
        transform = from_origin(origin[0], origin[1], xres * factor[1], yres * factor[0])
        area = geom if self.roi is None else geom.intersection(self.roi)
        if not area.equals(shapely.box(*geom.bounds)) or self.roi is not None:
            inside = geometry_mask([area], mask.shape, transform, invert=True, all_touched=False)
            mask = mask & inside
        return mask, factor

    @staticmethod
    def _same_grid(path: str, dataset: GeoDataset, size: tuple[int, int]) -> bool:
        """True when the file is read on the dataset's grid (same CRS, same pixel count)."""
        import rasterio
        from pyproj import CRS

        try:
            with rasterio.open(path) as ds:
                same_crs = ds.crs is not None and CRS.from_user_input(ds.crs) == dataset.crs
                return same_crs and (ds.height, ds.width) == size
        except rasterio.errors.RasterioIOError:
            return False

    def _windows_of(
        self,
        index: int,
        cells: tuple[np.ndarray, tuple[float, float]],
        size: tuple[int, int],
        origin: tuple[float, float],
        times: tuple[Any, Any],
    ) -> Iterator[NestedWindow]:
        mask, (fy, fx) = cells
        height, width = size
        wh, ww = self.window
        sh, sw = self.stride
        n_rows = max(1, math.ceil((height - wh) / sh) + 1) if height > wh else 1
        n_cols = max(1, math.ceil((width - ww) / sw) + 1) if width > ww else 1
        integral = np.pad(mask.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        xres, yres = self.res
        for r in range(n_rows):
            for c in range(n_cols):
                y, x = r * sh, c * sw
                # window in mask cells (rounded), clipped to the mask
                y0, y1 = round(y / fy), min(mask.shape[0], round((y + wh) / fy))
                x0, x1 = round(x / fx), min(mask.shape[1], round((x + ww) / fx))
                total = (wh / fy) * (ww / fx)
                n_valid = (
                    integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
                    if y1 > y0 and x1 > x0
                    else 0.0
                )
                frac = float(n_valid / total)
                if n_valid <= 0 or frac < self.min_valid:
                    continue
                x_start = origin[0] + x * xres
                y_stop = origin[1] - y * yres
                geoslice = (
                    slice(x_start, x_start + ww * xres, xres),
                    slice(y_stop - wh * yres, y_stop, yres),
                    slice(times[0], times[1]),
                )
                yield NestedWindow(index, y, x, wh, ww, frac, geoslice)

    # ------------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[tuple[slice, slice, slice]]:
        """Yield ``(slice(x0, x1, xres), slice(y0, y1, yres), slice(t0, t1))`` per window."""
        n = len(self.windows)
        if n == 0:
            return
        if self.length is not None:
            order = torch.randint(n, (self.length,), generator=self.generator).tolist()
        elif self.shuffle:
            order = torch.randperm(n, generator=self.generator).tolist()
        else:
            order = range(n)
        for i in order:
            yield self.windows[i].geoslice

    def __len__(self) -> int:
        """Windows per epoch."""
        return self._length
