"""GeoTIFF (any GDAL raster) source through rasterio windows.

GDAL keeps every block it decodes in a process-wide block cache whose default size is 5 % of
the machine's RAM (51 GB on a 1 TB server), so streaming a large raster once fills it with
blocks that are never read again. Opening a :class:`RasterSource` bounds that cache (64 MiB
by default, ``cache_mb``) unless the user chose a size themselves (see the class docs).

.. versionadded:: 0.1
"""

from __future__ import annotations

import atexit
import math
import os
import threading
import warnings
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from .base import ImageSource, existing_path, nodata_mask
from .errors import ImageReadError

__all__ = ["RasterSource", "DEFAULT_CACHE_MB", "bound_gdal_cache"]

#: Default bound (MiB) on GDAL's process-wide block cache set when a raster source opens.
DEFAULT_CACHE_MB = 64

_CACHE_LOCK = threading.Lock()
_CACHE_SET: int | None = None  # the cache max (bytes) this module last set, if any


def _user_cache_setting() -> bool:
    """True when the user chose GDAL's cache size: ``GDAL_CACHEMAX`` or a ``rasterio.Env``."""
    if "GDAL_CACHEMAX" in os.environ:
        return True
    from rasterio.env import getenv, hasenv

    return hasenv() and any(str(k).upper() == "GDAL_CACHEMAX" for k in getenv())


def bound_gdal_cache(cache_mb: float | None = DEFAULT_CACHE_MB) -> int:
    """Lower GDAL's process-wide block cache to ``cache_mb`` MiB (never raise it).

    Nothing changes when ``cache_mb`` is None, when the user set the size (the
    ``GDAL_CACHEMAX`` environment variable, or ``GDAL_CACHEMAX`` in an enclosing
    ``rasterio.Env``), or when the size was changed by anyone since this function last set it.
    :class:`RasterSource` calls it on every dataset open.

    Args:
        cache_mb: the bound in MiB.

    Returns:
        The effective cache size in bytes afterwards (``GDALGetCacheMax64``).
    """
    from rasterio.env import get_gdal_config, set_gdal_config

    global _CACHE_SET
    with _CACHE_LOCK:
        current = int(get_gdal_config("GDAL_CACHEMAX"))
        if cache_mb is None or _user_cache_setting():
            return current
        if _CACHE_SET is not None and current != _CACHE_SET:
            return current  # someone chose another size after us: theirs wins
        want = int(cache_mb * 2**20)
        if current > want:
            set_gdal_config("GDAL_CACHEMAX", want)
            _CACHE_SET = current = want
        return current


def _cause(exc: BaseException) -> str:
    """GDAL's own message: rasterio puts it in the chained exception ("see previous...")."""
    inner = exc.__cause__ or exc.__context__
    return str(inner) if inner is not None and str(inner) else str(exc)


def _read_errors() -> tuple[type[BaseException], ...]:
    from rasterio._err import CPLE_BaseError
    from rasterio.errors import RasterioError

    return (RasterioError, CPLE_BaseError)


def _band_indexes(bands: int | Sequence[int] | None, count: int, path: str) -> list[int]:
    """Validated 1-based band indexes."""
    if bands is None:
        return list(range(1, count + 1))
    indexes = [bands] if isinstance(bands, int | np.integer) else list(bands)
    if not indexes:
        raise ValueError(f"{path}: bands is empty; pass None for all {count} band(s)")
    for b in indexes:
        if not isinstance(b, int | np.integer) or not 1 <= b <= count:
            raise ValueError(
                f"{path}: band {b!r} is out of range: the file has {count} band(s) "
                f"(1-based like rasterio: 1..{count})"
            )
    return [int(b) for b in indexes]


_LIVE_SOURCES: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_live_sources() -> None:
    """Close GDAL handles before interpreter shutdown (else GDAL may report spurious errors)."""
    for source in list(_LIVE_SOURCES):
        try:
            source.close()
        except Exception:  # noqa: S110 - best effort at exit
            pass


class RasterSource(ImageSource):
    """A GeoTIFF (or any raster GDAL reads) read window by window through rasterio.

    Windows are clipped to the raster and padded with 0, so no VRT is built per read. Pixels
    are invalid in :meth:`read_mask` where every selected band equals its nodata value, where
    any band is NaN, and where the file's internal mask / alpha band says so. Each thread and
    process opens its own dataset handle on first use (GDAL handles are not thread-safe and
    must not cross a fork).

    Memory: GDAL caches decoded blocks in one block cache for the whole process, by default
    5 % of RAM, which a single pass over a large raster fills. Every dataset open lowers that
    cache to ``cache_mb`` (64 MiB by default; it is never raised, so the smallest bound asked
    for wins), so streaming a 16k^2 GeoTIFF peaks at the same memory as a 4k^2 one. A size the
    user chose is kept: the ``GDAL_CACHEMAX`` environment variable, or ``GDAL_CACHEMAX`` in a
    ``rasterio.Env`` the source is opened in (``rasterio.Env(GDAL_CACHEMAX=512 * 2**20)``,
    bytes). Pass ``cache_mb=None`` to leave GDAL's cache alone.

    Args:
        path: raster file.
        bands: 1-based band index or list of them (like rasterio); None for all bands.
        nodata: nodata value for every selected band, overriding the file's.
        cache_mb: bound in MiB on GDAL's process-wide block cache, applied when a dataset
            opens (see above); None leaves the cache as it is.

    Attributes:
        bands: selected 1-based band indexes.
        nodata: nodata value of the first selected band (after ``nodata=``), or None.
        crs: ``rasterio.crs.CRS`` of the file (None when not georeferenced).
        transform: ``affine.Affine`` pixel -> map transform.
        res: (x, y) pixel size in map units.
        bounds: ``rasterio.coords.BoundingBox`` in map units.
        cache_mb: the block cache bound in MiB (None: not bounded by this source).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ImageReadError: if rasterio cannot open the file.
        ValueError: if a band index is out of range, or ``cache_mb`` is negative.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
        ``cache_mb``: GDAL's block cache is bounded (64 MiB by default) when a dataset opens.
    """

    _transient = ("_local", "_handles", "_handles_lock", "_handles_pid")

    def __init__(
        self,
        path: str | os.PathLike[str],
        bands: int | Sequence[int] | None = None,
        nodata: float | None = None,
        cache_mb: float | None = DEFAULT_CACHE_MB,
    ) -> None:
        if cache_mb is not None and not cache_mb >= 0:
            raise ValueError(f"cache_mb must be >= 0 (MiB) or None, got {cache_mb}")
        self.cache_mb = None if cache_mb is None else float(cache_mb)
        p = existing_path(path)
        self.path = str(p)
        self.name = p.name
        super().__init__()
        ds = self._dataset()
        self.bands = _band_indexes(bands, ds.count, self.path)
        self.crs = ds.crs
        self.transform = ds.transform
        self.res = ds.res
        self.bounds = ds.bounds
        idx = [b - 1 for b in self.bands]
        self.dtype = np.result_type(*[np.dtype(ds.dtypes[i]) for i in idx])
        self.shape = (len(self.bands), int(ds.height), int(ds.width))
        if nodata is not None:
            self._nodatas: list[float | None] = [float(nodata)] * len(idx)
        else:
            self._nodatas = [ds.nodatavals[i] for i in idx]
        self.nodata = self._nodatas[0]
        self._mask_band = self._uses_mask_band(ds, idx)

    @staticmethod
    def _uses_mask_band(ds: Any, idx: list[int]) -> bool:
        """True when the file carries a per-dataset mask or an alpha band (not just nodata)."""
        from rasterio.enums import MaskFlags

        flags = ds.mask_flag_enums[idx[0]]
        return MaskFlags.per_dataset in flags or MaskFlags.alpha in flags

    # ------------------------------------------------------------------------ handles
    def _init_transient(self) -> None:
        super()._init_transient()
        self._handles: list[Any] = []
        self._handles_lock = threading.Lock()
        self._handles_pid = os.getpid()
        _LIVE_SOURCES.add(self)

    def _dataset(self) -> Any:
        """This thread's open dataset (opened on first use, and again after a fork)."""
        pid = os.getpid()
        ds = getattr(self._local, "ds", None)
        if ds is not None and self._local.pid == pid and not ds.closed:
            return ds
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning

        bound_gdal_cache(self.cache_mb)
        try:
            with warnings.catch_warnings():  # plain TIFFs are fine: pixel coordinates
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                ds = rasterio.open(self.path)
        except _read_errors() as e:
            raise ImageReadError(f"{self.path}: rasterio cannot open the file: {_cause(e)}") from e
        if self._handles_pid != pid:  # forked: the parent's handles and lock are not ours
            self._handles_lock = threading.Lock()
            self._handles, self._handles_pid = [], pid
        with self._handles_lock:
            self._handles.append(ds)
        self._local.ds, self._local.pid = ds, pid
        return ds

    def close(self) -> None:
        """Close every dataset handle this process opened; a later read reopens."""
        with self._handles_lock:
            handles = self._handles if self._handles_pid == os.getpid() else []
            self._handles = []
        for ds in handles:
            ds.close()

    # ------------------------------------------------------------------------ reading
    def _read_inside(self, y: int, x: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray | None]:
        from rasterio.windows import Window

        ds = self._dataset()
        window = Window(x, y, w, h)
        try:
            data = ds.read(self.bands, window=window, out_dtype=self.dtype)  # (C, h, w)
            mask = nodata_mask(data, self._nodatas)
            if self._mask_band:
                inner = ds.read_masks(self.bands[0], window=window) > 0  # (h, w)
                mask = inner if mask is None else mask & inner
        except _read_errors() as e:
            raise ImageReadError(
                f"{self.path}: reading rows {y}:{y + h}, cols {x}:{x + w} "
                f"(bands {self.bands}) failed: {_cause(e)}"
            ) from e
        return data, mask

    def thumbnail(self, max_side: int = 1024, resampling: str = "average") -> np.ndarray:
        """A small (h, w, C) overview read through GDAL (uses the file's overviews if any).

        Args:
            max_side: longest side of the result.
            resampling: a ``rasterio.enums.Resampling`` name ("average", "nearest", ...).
        """
        from rasterio.enums import Resampling

        if max_side < 1:
            raise ValueError(f"max_side must be >= 1, got {max_side}")
        c, height, width = self.shape
        s = min(1.0, max_side / max(height, width))
        out_shape = (c, max(1, round(height * s)), max(1, round(width * s)))
        try:
            data = self._dataset().read(
                self.bands,
                out_shape=out_shape,
                resampling=Resampling[resampling],
                out_dtype=self.dtype,
            )
        except _read_errors() as e:
            raise ImageReadError(f"{self.path}: reading a thumbnail failed: {_cause(e)}") from e
        return np.moveaxis(data, 0, -1)

    # ------------------------------------------------------------------------ geometry
    def pixel_to_map(
        self, rows: Any, cols: Any, offset: str = "center"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Map coordinates (in ``crs``) of pixel positions.

        Args:
            rows: row indexes (scalars or arrays; fractional allowed).
            cols: column indexes, same shape as ``rows``.
            offset: ``"center"`` for pixel centres, ``"ul"`` for upper-left corners.

        Returns:
            ``(xs, ys)`` float64 arrays shaped like the inputs.
        """
        shift = {"center": 0.5, "ul": 0.0}.get(offset)
        if shift is None:
            raise ValueError(f"offset must be 'center' or 'ul', got {offset!r}")
        r = np.asarray(rows, dtype=np.float64) + shift
        c = np.asarray(cols, dtype=np.float64) + shift
        t = self.transform
        return t.a * c + t.b * r + t.c, t.d * c + t.e * r + t.f

    def map_to_pixel(self, xs: Any, ys: Any) -> tuple[np.ndarray, np.ndarray]:
        """Fractional ``(rows, cols)`` of map coordinates (``floor`` gives the pixel index)."""
        t = ~self.transform
        x = np.asarray(xs, dtype=np.float64)
        y = np.asarray(ys, dtype=np.float64)
        return t.d * x + t.e * y + t.f, t.a * x + t.b * y + t.c

    def __repr__(self) -> str:
        base = super().__repr__()[:-1]
        crs = self.crs.to_string() if self.crs else None
        return f"{base}, bands={self.bands}, crs={crs}, res={tuple(map(_short, self.res))})"


def _short(v: float) -> float:
    """Round a float for display."""
    return float(f"{v:.6g}") if math.isfinite(v) else v
