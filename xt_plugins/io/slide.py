"""Whole-slide image source through MONAI's ``WSIReader(backend="openslide")``.

The output resolution is a pyramid level, or a target microns-per-pixel: the level within
``mpp_tolerance`` of it, else the next finer level resized on the fly. Resized reads are
seamless: each window is resampled (bilinear, antialiased) from a slightly larger level
region with PIL's ``box`` resize, which gives the same pixels as resizing the whole level
(what MONAI's ``get_wsi_at_mpp`` does) up to +-1 grey level.

Pixels come from the OpenSlide handle's ``read_region`` directly (MONAI's reader opens the
slide and supplies the level geometry and mpp). Decoded tiles are kept in a bounded OpenSlide
tile cache shared by every :class:`SlideSource` of the process (see ``cache_mb``).

.. versionadded:: 0.1
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from typing import Any

import numpy as np

from .base import ImageSource, existing_path
from .errors import ImageReadError, MissingMPPError, SlideOpenError

__all__ = ["SlideSource"]

#: Alpha at or above this counts as real tissue/background data (OpenSlide marks areas
#: without scanned tiles transparent).
_ALPHA_VALID = 128
#: Longest level region (level pixels) one thumbnail block reads.
_THUMB_BLOCK = 2048
#: Default capacity (MiB) of the OpenSlide tile cache shared by the slide sources of a process.
DEFAULT_CACHE_MB = 64

_CACHES: dict[int, Any] = {}  # capacity in bytes -> OpenSlideCache of this process
_CACHES_PID: int | None = None
_CACHES_LOCK = threading.Lock()


def shared_tile_cache(capacity: int) -> Any:
    """This process's ``openslide.OpenSlideCache`` of ``capacity`` bytes (one per capacity).

    Slides attached to the same cache share its bound, so the decoded tiles held for all open
    slides together stay within ``capacity`` (OpenSlide's own default is a private 32 MiB cache
    per open slide, which grows with the number of slides). A forked child builds its own.
    """
    import openslide

    global _CACHES_PID
    with _CACHES_LOCK:
        if _CACHES_PID != os.getpid():
            _CACHES.clear()
            _CACHES_PID = os.getpid()
        cache = _CACHES.get(capacity)
        if cache is None:
            cache = _CACHES[capacity] = openslide.OpenSlideCache(capacity)
        return cache


def _openslide_errors() -> tuple[type[BaseException], ...]:
    import openslide

    return (openslide.OpenSlideError,)


class SlideSource(ImageSource):
    """A whole-slide image (SVS, NDPI, MRXS, DICOM, pyramidal TIFF, ...) as RGB uint8.

    Args:
        path: slide file (for DICOM, any file of the series).
        level: pyramid level to read (0 = full resolution). Exclusive with ``mpp``.
        mpp: target resolution in microns per pixel. The level whose mpp is within
            ``mpp_tolerance`` (relative) is used as is; otherwise the next finer level is read
            and each window resized, so ``shape`` is the slide's size at ``mpp``.
        slide_mpp: level-0 microns per pixel, overriding (or supplying) the slide's own.
        mpp_tolerance: relative tolerance for a level to count as ``mpp``.
        cache_mb: capacity in MiB of the OpenSlide tile cache (decoded tiles). It is shared by
            every slide source of the process opened with the same value, so the tiles held
            stay within it however many slides are open; 0 disables caching; None keeps
            OpenSlide's default (a private 32 MiB cache per open slide).

    Pixels are treated as square: the slide's mpp is the mean of its x and y mpp.

    Attributes:
        level: pyramid level the pixels are read from.
        mpp: microns per output pixel (None when unknown).
        scale: output pixel -> level-0 pixel factor.
        level0_shape: (H0, W0) of level 0.
        level_shapes: (h, w) of every level.
        level_downsamples: level-0 pixels per level pixel, per level (OpenSlide's values).
        slide_mpp: level-0 microns per pixel (None when unknown).
        vendor: OpenSlide's vendor string ("aperio", "generic-tiff", "dicom", ...).
        cache_mb: the tile cache capacity in MiB (None: OpenSlide's default).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        SlideOpenError: if OpenSlide cannot open the file.
        MissingMPPError: if ``mpp`` is asked of a slide without mpp and no ``slide_mpp``.
        ValueError: for an out-of-range level, non-positive mpp or negative ``cache_mb``.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
        ``cache_mb``: a bounded tile cache shared by the process (64 MiB by default); reads
        call OpenSlide's ``read_region`` directly (within a few % of the raw read).
    """

    _transient = ("_local", "_wsi", "_wsi_pid", "_reader", "_open_lock")

    def __init__(
        self,
        path: str | os.PathLike[str],
        level: int | None = None,
        mpp: float | None = None,
        slide_mpp: float | None = None,
        mpp_tolerance: float = 0.1,
        cache_mb: float | None = DEFAULT_CACHE_MB,
    ) -> None:
        if level is not None and mpp is not None:
            raise ValueError("pass either level= or mpp=, not both")
        if cache_mb is not None and not cache_mb >= 0:
            raise ValueError(f"cache_mb must be >= 0 (MiB) or None, got {cache_mb}")
        self.cache_mb = None if cache_mb is None else float(cache_mb)
        p = existing_path(path)
        self.path = str(p)
        self.name = p.name
        super().__init__()
        wsi, reader = self._wsi_handle(), self._reader
        n = int(reader.get_level_count(wsi))
        self.level_count = n
        self.level_shapes = tuple(tuple(map(int, reader.get_size(wsi, i))) for i in range(n))
        self.level_downsamples = tuple(float(reader.get_downsample_ratio(wsi, i)) for i in range(n))
        self.level0_shape: tuple[int, int] = self.level_shapes[0]  # type: ignore[assignment]
        self.vendor: str | None = wsi.properties.get("openslide.vendor")
        if slide_mpp is not None:
            if not slide_mpp > 0:
                raise ValueError(f"slide_mpp must be > 0, got {slide_mpp}")
            self.slide_mpp: float | None = float(slide_mpp)
        else:
            self.slide_mpp = self._mpp_from_file(wsi)
        self._choose_level(level, mpp, mpp_tolerance)
        self.dtype = np.dtype(np.uint8)

    # ------------------------------------------------------------------------ set-up
    def _mpp_from_file(self, wsi: Any) -> float | None:
        """Level-0 mpp through MONAI's ``get_mpp``; None when the slide does not record it."""
        props = wsi.properties
        if "openslide.mpp-x" not in props and "tiff.ResolutionUnit" not in props:
            return None  # MONAI would assume micrometres for a bare XResolution: not trusted
        try:
            mpp_y, mpp_x = self._reader.get_mpp(wsi, 0)
        except (ValueError, KeyError):
            return None
        mpp = (float(mpp_y) + float(mpp_x)) / 2
        return mpp if math.isfinite(mpp) and mpp > 0 else None

    def _choose_level(self, level: int | None, mpp: float | None, tolerance: float) -> None:
        """Set ``level``, the per-axis resize factors, ``shape``, ``mpp`` and ``scale``."""
        n = self.level_count
        level_mpps = None
        if self.slide_mpp is not None:
            level_mpps = [self.slide_mpp * d for d in self.level_downsamples]
        self._factors = (1.0, 1.0)  # output px per level px, (y, x)
        if mpp is not None:
            if not mpp > 0:
                raise ValueError(f"mpp must be > 0, got {mpp}")
            if level_mpps is None:
                raise MissingMPPError(
                    f"{self.path}: the slide records no microns-per-pixel, so mpp={mpp} cannot "
                    "be honoured; pass slide_mpp=<microns per level-0 pixel> "
                    "(CLI: --slide-mpp) or choose a pyramid level with level="
                )
            target = float(mpp)
            rel = [abs(m - target) / target for m in level_mpps]
            best = int(np.argmin(rel))  # ties go to the finer level
            if rel[best] <= tolerance:
                level = best
            else:
                finer = [i for i, m in enumerate(level_mpps) if m < target]
                if finer:
                    level = max(finer, key=lambda i: level_mpps[i])
                else:
                    level = 0
                    warnings.warn(
                        f"{self.path}: mpp={target} is finer than level 0 "
                        f"({level_mpps[0]:.4g} um/px); reads are upsampled",
                        stacklevel=3,
                    )
                lh, lw = self.level_shapes[level]
                f = level_mpps[level] / target
                out_h, out_w = max(1, round(lh * f)), max(1, round(lw * f))
                self._factors = (out_h / lh, out_w / lw)
        else:
            level = 0 if level is None else int(level)
            if not 0 <= level < n:
                raise ValueError(
                    f"{self.path}: level {level} is out of range: the slide has {n} level(s) "
                    f"(0..{n - 1})"
                )
        self.level = level
        lh, lw = self.level_shapes[level]
        fy, fx = self._factors
        self.shape = (3, round(lh * fy), round(lw * fx))
        f = (fy + fx) / 2
        self.scale = self.level_downsamples[level] / f
        self.mpp = None if level_mpps is None else level_mpps[level] / f

    @property
    def resized(self) -> bool:
        """True when reads are resampled from ``level`` (no level matched ``mpp``)."""
        return self._factors != (1.0, 1.0)

    # ------------------------------------------------------------------------ handles
    def _init_transient(self) -> None:
        from monai.data import WSIReader

        super()._init_transient()
        self._reader = WSIReader(backend="openslide", channel_dim=0, dtype=np.uint8)
        self._wsi = None
        self._wsi_pid = None
        self._open_lock = threading.Lock()

    def _wsi_handle(self) -> Any:
        """This process's OpenSlide object (opened on first use; OpenSlide is thread-safe)."""
        pid = os.getpid()
        if self._wsi is not None and self._wsi_pid == pid:
            return self._wsi
        if self._wsi is not None:  # forked: the parent's handle and lock are not ours
            self._wsi, self._open_lock = None, threading.Lock()
        with self._open_lock:
            if self._wsi is None or self._wsi_pid != pid:
                try:
                    self._wsi = self._reader.read(self.path)
                except _openslide_errors() as e:
                    msg = f"{self.path}: OpenSlide cannot open the slide: {e}"
                    raise SlideOpenError(msg) from e
                if self.cache_mb is not None:  # ImageSlide (plain images) ignores caches
                    self._wsi.set_cache(shared_tile_cache(int(self.cache_mb * 2**20)))
                self._wsi_pid = pid
        return self._wsi

    def close(self) -> None:
        """Close the OpenSlide handle of this process; a later read reopens."""
        with self._open_lock:
            wsi, self._wsi = self._wsi, None
            if wsi is not None and self._wsi_pid == os.getpid():
                wsi.close()

    # ------------------------------------------------------------------------ reading
    def _read_level(self, level: int, y: int, x: int, h: int, w: int) -> Any:
        """The RGBA PIL image of a window in ``level`` pixels, from OpenSlide's ``read_region``.

        The handle's own ``read_region`` is called directly (MONAI's ``get_data`` adds a
        ``convert``, an array copy and a channel move on top of it).
        """
        ds = self.level_downsamples[level]
        location = (round(x * ds), round(y * ds))  # level-0 (x, y), OpenSlide's order
        try:
            return self._wsi_handle().read_region(location, level, (w, h))
        except _openslide_errors() as e:
            raise ImageReadError(
                f"{self.path}: reading rows {y}:{y + h}, cols {x}:{x + w} of level {level} "
                f"(level-0 y={location[1]}, x={location[0]}) failed: {e}"
            ) from e

    def _read_resampled(
        self, level: int, factors: tuple[float, float], y: int, x: int, h: int, w: int
    ) -> Any:
        """The RGBA PIL image of an output window, resampled from ``level`` by ``factors``.

        The window must lie inside the output extent ``level size * factors``. A margin of
        level pixels around it feeds the filter, so adjacent windows join without seams.
        """
        from PIL import Image

        fy, fx = factors
        lh, lw = self.level_shapes[level]
        by0, by1 = y / fy, min((y + h) / fy, lh)  # level-pixel box of the window
        bx0, bx1 = x / fx, min((x + w) / fx, lw)
        my, mx = math.ceil(1 / fy) + 2, math.ceil(1 / fx) + 2  # bilinear support + slack
        ry0, ry1 = max(0, math.floor(by0) - my), min(lh, math.ceil(by1) + my)
        rx0, rx1 = max(0, math.floor(bx0) - mx), min(lw, math.ceil(bx1) + mx)
        region = self._read_level(level, ry0, rx0, ry1 - ry0, rx1 - rx0)  # RGBA (rw, rh)
        box = (bx0 - rx0, by0 - ry0, bx1 - rx0, by1 - ry0)
        return region.resize((w, h), Image.Resampling.BILINEAR, box=box)

    @staticmethod
    def _split_rgba(image: Any) -> tuple[np.ndarray, np.ndarray]:
        """RGB (3, h, w), 0 where transparent, and the (h, w) validity mask from alpha.

        Each band is taken out of the RGBA image by PIL's raw encoder straight into the planar
        output (one copy per band, no strided numpy transpose).
        """
        w, h = image.size
        bands = (image.tobytes("raw", band) for band in "RGB")
        planes = bytearray().join(bands)  # one allocation, (3, h, w) C order
        rgb = np.frombuffer(planes, dtype=np.uint8).reshape(3, h, w)  # writable: a bytearray
        alpha = np.frombuffer(image.tobytes("raw", "A"), dtype=np.uint8).reshape(h, w)
        if h * w == 0 or alpha.min() >= _ALPHA_VALID:
            return rgb, np.ones((h, w), dtype=bool)
        mask = alpha >= _ALPHA_VALID  # (h, w)
        rgb[:, ~mask] = 0
        return rgb, mask

    def _read_inside(self, y: int, x: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray | None]:
        if self.resized:
            rgba = self._read_resampled(self.level, self._factors, y, x, h, w)
        else:
            rgba = self._read_level(self.level, y, x, h, w)
        return self._split_rgba(rgba)

    def _thumbnail_level(self, max_side: int) -> tuple[int, tuple[int, int]]:
        """The coarsest level at least as large as the thumbnail, and the thumbnail's (h, w)."""
        h0, w0 = self.level0_shape
        s = min(1.0, max_side / max(h0, w0))
        size = (max(1, round(h0 * s)), max(1, round(w0 * s)))
        for level in reversed(range(self.level_count)):
            lh, lw = self.level_shapes[level]
            if lh >= size[0] and lw >= size[1]:
                return level, size
        return 0, size

    def thumbnail(self, max_side: int = 1024) -> np.ndarray:
        """The whole slide as (h, w, 3) uint8, longest side ``max_side`` (never upsampled).

        Read from the coarsest level that is at least that large, block by block, so even a
        slide without a pyramid is reduced with bounded memory.
        """
        if max_side < 1:
            raise ValueError(f"max_side must be >= 1, got {max_side}")
        level, (th, tw) = self._thumbnail_level(max_side)
        lh, lw = self.level_shapes[level]
        factors = (th / lh, tw / lw)
        out = np.zeros((3, th, tw), dtype=np.uint8)  # (3, h, w)
        by = max(1, math.floor(_THUMB_BLOCK * factors[0]))
        bx = max(1, math.floor(_THUMB_BLOCK * factors[1]))
        for y in range(0, th, by):
            for x in range(0, tw, bx):
                h, w = min(by, th - y), min(bx, tw - x)
                if factors == (1.0, 1.0):
                    rgba = self._read_level(level, y, x, h, w)
                else:
                    rgba = self._read_resampled(level, factors, y, x, h, w)
                out[:, y : y + h, x : x + w] = self._split_rgba(rgba)[0]
        return np.moveaxis(out, 0, -1)

    def __repr__(self) -> str:
        base = super().__repr__()[:-1]
        mpp = None if self.mpp is None else round(self.mpp, 4)
        return f"{base}, level={self.level}, mpp={mpp}, scale={self.scale:.4g})"
