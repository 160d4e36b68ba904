"""The lazy image source interface: boundless window reads plus a validity mask.

A source never holds a whole image or slide level in memory. It exposes ``shape`` (C, H, W),
``dtype``, ``path`` and ``name``, and reads any window ``(y, x, h, w)``: pixels outside the
image are 0, and :meth:`ImageSource.read_mask` says which pixels are real data (inside the
image, not nodata, not NaN). Sources pickle without their file handles and reopen lazily, so
they work in DataLoader workers (fork or spawn).

.. versionadded:: 0.1
"""

from __future__ import annotations

import math
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np

__all__ = ["ImageSource", "Window", "clip_window", "nodata_mask"]

#: A window ``(y, x, h, w)``: top row, left column, height and width in pixels.
Window = tuple[int, int, int, int]


def check_window(y: int, x: int, h: int, w: int) -> Window:
    """Return the window as Python ints; a negative height or width is a ``ValueError``."""
    y, x, h, w = int(y), int(x), int(h), int(w)
    if h < 0 or w < 0:
        raise ValueError(f"window size must be >= 0, got h={h}, w={w}")
    return y, x, h, w


def clip_window(
    y: int, x: int, h: int, w: int, height: int, width: int
) -> tuple[Window, tuple[int, int]] | None:
    """Intersect a window with an ``height x width`` image.

    Returns:
        ``((y0, x0, h0, w0), (oy, ox))``: the part of the window inside the image and where it
        starts in the window (output) frame; None when the window misses the image.
    """
    y0, x0 = max(y, 0), max(x, 0)
    y1, x1 = min(y + h, height), min(x + w, width)
    if y1 <= y0 or x1 <= x0:
        return None
    return (y0, x0, y1 - y0, x1 - x0), (y0 - y, x0 - x)


def nodata_mask(
    data: np.ndarray, nodata: float | Sequence[float | None] | None
) -> np.ndarray | None:
    """Validity of each pixel of ``data`` (C, h, w) from nodata values and NaN.

    A pixel is nodata when *every* band equals its band's nodata value (GDAL's dataset-mask
    rule: a dark pixel with one zero band is still data), and invalid when *any* band is NaN.

    Args:
        data: (C, h, w) pixels.
        nodata: one value for all bands, one per band (None: that band has none), or None.

    Returns:
        (h, w) bool, True on real data; None when the dtype cannot hold NaN and no nodata is set.
    """
    c = data.shape[0]
    values = list(nodata) if isinstance(nodata, Sequence) else [nodata] * c
    if len(values) != c:
        raise ValueError(f"got {len(values)} nodata values for {c} bands")
    finite = [v for v in values if v is not None and not math.isnan(v)]
    can_nan = np.issubdtype(data.dtype, np.inexact)
    if not can_nan and len(finite) < c:
        return None
    valid = np.ones(data.shape[1:], dtype=bool)  # (h, w)
    if len(finite) == c and c > 0:
        is_nodata = data[0] == values[0]
        for band, value in zip(data[1:], values[1:], strict=True):
            is_nodata &= band == value
        valid &= ~is_nodata
    if can_nan:
        valid &= ~np.isnan(data).any(axis=0)
    return valid


def existing_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path; a missing file is a ``FileNotFoundError`` naming it."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    return p


class ImageSource(ABC):
    """A lazily read (C, H, W) image: boundless windows and a validity mask.

    Subclasses set ``shape``, ``dtype``, ``path`` and ``name`` and implement
    :meth:`_read_inside` for windows fully inside the image; padding outside the image and the
    mask bookkeeping live here. Attributes listed in ``_transient`` (open file handles) are
    dropped when pickling and rebuilt by :meth:`_init_transient`.

    .. versionadded:: 0.1
    """

    #: (C, H, W) of what :meth:`read` returns over the whole image.
    shape: tuple[int, int, int]
    #: dtype of what :meth:`read` returns.
    dtype: np.dtype
    #: File the pixels come from (for messages); None for in-memory arrays.
    path: str | None = None
    #: Short display name (file name).
    name: str = "image"
    #: Instance attributes that are not pickled (file handles, thread-local caches).
    _transient: tuple[str, ...] = ("_local",)

    def __init__(self) -> None:
        self._init_transient()

    # ------------------------------------------------------------------------ geometry
    @property
    def channels(self) -> int:
        """Number of channels C."""
        return self.shape[0]

    @property
    def height(self) -> int:
        """Image height H in pixels."""
        return self.shape[1]

    @property
    def width(self) -> int:
        """Image width W in pixels."""
        return self.shape[2]

    # ------------------------------------------------------------------------ reading
    @abstractmethod
    def _read_inside(self, y: int, x: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Read a non-empty window that lies fully inside the image.

        Returns:
            ``(data, mask)``: a fresh (C, h, w) array of ``dtype`` that the caller may modify,
            and the (h, w) bool validity mask, or None when the source has no nodata concept.
        """

    def read_with_mask(
        self, y: int, x: int, h: int, w: int
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Read a window and its validity mask in one pass.

        Args:
            y: top row (may be negative or beyond the image).
            x: left column (may be negative or beyond the image).
            h: window height.
            w: window width.

        Returns:
            ``(data, mask)``: (C, h, w) pixels, 0 outside the image; (h, w) bool mask, True on
            real data, or None when the source has no nodata concept and the window is inside.
        """
        y, x, h, w = check_window(y, x, h, w)
        c, height, width = self.shape
        clipped = clip_window(y, x, h, w, height, width)
        if clipped is not None and clipped[0] == (y, x, h, w):
            return self._read_inside(y, x, h, w)
        out = np.zeros((c, h, w), dtype=self.dtype)  # (C, h, w)
        mask = np.zeros((h, w), dtype=bool)  # (h, w)
        if clipped is not None:
            (y0, x0, h0, w0), (oy, ox) = clipped
            data, inner = self._read_inside(y0, x0, h0, w0)
            out[:, oy : oy + h0, ox : ox + w0] = data
            mask[oy : oy + h0, ox : ox + w0] = True if inner is None else inner
        return out, mask

    def read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        """Read the window ``(y, x, h, w)`` as (C, h, w); pixels outside the image are 0.

        The validity mask computed on the way is kept (per thread) so that a following
        :meth:`read_mask` of the same window does not read the file again.
        """
        data, mask = self.read_with_mask(y, x, h, w)
        self._local.pending = ((int(y), int(x), int(h), int(w)), mask)
        return data

    def read_mask(self, y: int, x: int, h: int, w: int) -> np.ndarray | None:
        """Validity of the window ``(y, x, h, w)``: (h, w) bool, True where pixels are real data.

        Returns None when the source has no nodata concept and the window is fully inside
        the image (every pixel is valid).
        """
        key = (int(y), int(x), int(h), int(w))
        pending = getattr(self._local, "pending", None)
        if pending is not None and pending[0] == key:
            self._local.pending = None
            return pending[1]
        return self.read_with_mask(*key)[1]

    def thumbnail(self, max_side: int = 1024) -> np.ndarray:
        """A small (h, w, C) overview, longest side at most ``max_side`` (nearest sampling).

        Reads the image in strips of rows, so memory stays bounded for any image size.
        """
        if max_side < 1:
            raise ValueError(f"max_side must be >= 1, got {max_side}")
        c, height, width = self.shape
        step = max(1, math.ceil(max(height, width) / max_side))
        out = np.zeros((c, -(-height // step), -(-width // step)), dtype=self.dtype)
        row_bytes = step * width * c * self.dtype.itemsize
        rows_per_strip = max(1, (64 << 20) // max(row_bytes, 1))  # ~64 MB per strip
        for i in range(0, out.shape[1], rows_per_strip):
            n = min(rows_per_strip, out.shape[1] - i)
            strip = self.read(i * step, 0, n * step, width)
            out[:, i : i + n] = strip[:, ::step, ::step][:, :n]
        self._local.pending = None
        return np.moveaxis(out, 0, -1)

    # ------------------------------------------------------------------------ life cycle
    def _init_transient(self) -> None:
        """(Re)create the unpicklable per-process state; subclasses extend it."""
        self._local = threading.local()

    def close(self) -> None:  # noqa: B027 (optional hook, not abstract)
        """Release open file handles; a later read reopens the file."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for key in self._transient:
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_transient()

    def __repr__(self) -> str:
        c, h, w = self.shape
        return f"{type(self).__name__}({self.name!r}, shape=({c}, {h}, {w}), dtype={self.dtype})"
