"""Sources over arrays already addressable by slicing: numpy arrays, memmaps and zarr arrays.

.. versionadded:: 0.1
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np

from .base import ImageSource, existing_path, nodata_mask

__all__ = ["ArraySource", "ZarrSource"]


def _as_chw_shape(shape: tuple[int, ...], what: str) -> tuple[int, int, int]:
    """(C, H, W) of a 2-D (H, W) or 3-D (C, H, W) array shape."""
    if len(shape) == 2:
        return (1, int(shape[0]), int(shape[1]))
    if len(shape) == 3:
        return (int(shape[0]), int(shape[1]), int(shape[2]))
    raise ValueError(f"{what}: expected a (C, H, W) or (H, W) array, got shape {tuple(shape)}")


def _memmap_spec(arr: np.ndarray) -> dict[str, Any] | None:
    """Where a memmap (or a view of one) lives in its file, to reopen it after pickling."""
    mm = getattr(arr, "_mmap", None)
    filename = getattr(arr, "filename", None)
    if not isinstance(mm, mmap.mmap) or filename is None:
        return None
    base = np.frombuffer(mm, dtype=np.uint8)
    try:
        start = int(arr.offset) - int(arr.offset) % mmap.ALLOCATIONGRANULARITY
        rel = arr.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    finally:
        del base
    return dict(
        filename=str(filename),
        dtype=arr.dtype.str,
        shape=tuple(arr.shape),
        strides=tuple(arr.strides),
        offset=start + rel,
    )


def _open_memmap(spec: dict[str, Any]) -> np.ndarray:
    """Reopen a memmap view described by :func:`_memmap_spec` (read-only, no data copied)."""
    base = np.memmap(spec["filename"], dtype=np.uint8, mode="r")
    return np.ndarray(
        spec["shape"],
        dtype=np.dtype(spec["dtype"]),
        buffer=base,
        offset=spec["offset"],
        strides=spec["strides"],
    )


class ArraySource(ImageSource):
    """A numpy array or ``np.memmap`` in (C, H, W) layout (2-D arrays are one channel).

    Reads copy only the requested window. A memmap pickles as its file name and offset, never
    its pixels, so DataLoader workers map the file themselves.

    Args:
        array: (C, H, W) or (H, W) array.
        nodata: value that marks missing pixels (a pixel is missing when every band has it).
        name: display name; defaults to the memmap's file name or ``"array"``.

    .. versionadded:: 0.1
    """

    def __init__(
        self, array: np.ndarray, nodata: float | None = None, name: str | None = None
    ) -> None:
        if not isinstance(array, np.ndarray):
            raise TypeError(f"ArraySource needs a numpy array, got {type(array).__name__}")
        self.shape = _as_chw_shape(array.shape, "ArraySource")
        self._array = array[None] if array.ndim == 2 else array  # (C, H, W)
        self.dtype = self._array.dtype
        self.nodata = None if nodata is None else float(nodata)
        self._spec = _memmap_spec(self._array)
        filename = getattr(array, "filename", None)
        self.path = None if filename is None else str(filename)
        self.name = name or (Path(self.path).name if self.path else "array")
        super().__init__()

    @property
    def _transient(self) -> tuple[str, ...]:  # type: ignore[override]
        # A memmap is pickled as its file location; an in-memory array by value.
        return ("_local", "_array") if self._spec is not None else ("_local",)

    def _init_transient(self) -> None:
        super()._init_transient()
        if "_array" not in self.__dict__:
            self._array = _open_memmap(self._spec)

    @property
    def array(self) -> np.ndarray:
        """The underlying (C, H, W) array (a view, not a copy)."""
        return self._array

    def _read_inside(self, y: int, x: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray | None]:
        data = np.array(self._array[:, y : y + h, x : x + w])  # (C, h, w) fresh copy
        return data, nodata_mask(data, self.nodata)


class ZarrSource(ImageSource):
    """A zarr (v3) array in (C, H, W) or (H, W) layout, or a path to a ``.zarr`` store.

    Args:
        array_or_path: an open ``zarr.Array`` or the path of a store (opened read-only).
        name: array to use inside a zarr group; optional when the group holds one array.
        nodata: value that marks missing pixels (a pixel is missing when every band has it).

    Raises:
        FileNotFoundError: if the path does not exist.
        ValueError: if the store is a group and ``name`` does not pick one array.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        array_or_path: Any,
        name: str | None = None,
        nodata: float | None = None,
    ) -> None:
        self.nodata = None if nodata is None else float(nodata)
        self.array_name = name
        if isinstance(array_or_path, str | os.PathLike):
            self.path = str(existing_path(array_or_path))
            self._from_path = True
            super().__init__()
            arr = self._array
        else:
            arr = array_or_path
            if not hasattr(arr, "shape") or not hasattr(arr, "dtype"):
                kind = type(arr).__name__
                raise TypeError(f"ZarrSource needs a zarr array or a path, got {kind}")
            self.path = str(getattr(arr, "store_path", "")) or None
            self._from_path = False
            super().__init__()
            self._array = arr
        self.shape = _as_chw_shape(tuple(arr.shape), self.path or "zarr array")
        self.dtype = np.dtype(arr.dtype)
        base = Path(self.path.rstrip("/")).name if self.path else "zarr"
        self.name = f"{base}/{name}" if name else base

    @property
    def _transient(self) -> tuple[str, ...]:  # type: ignore[override]
        # The array object is pickled only when it did not come from a path.
        return ("_local", "_array") if self._from_path else ("_local",)

    def _init_transient(self) -> None:
        super()._init_transient()
        if self._from_path:
            self._array = self._open_path()

    def _open_path(self) -> Any:
        import zarr

        node = zarr.open(self.path, mode="r")
        if isinstance(node, zarr.Array):
            if self.array_name:
                raise ValueError(
                    f"{self.path}: is an array, not a group; drop name={self.array_name!r}"
                )
            return node
        arrays = sorted(node.array_keys())
        if self.array_name is None:
            if len(arrays) != 1:
                raise ValueError(
                    f"{self.path}: zarr group holds {len(arrays)} arrays {arrays}; "
                    "choose one with name="
                )
            self.array_name = arrays[0]
        if self.array_name not in arrays:
            raise ValueError(
                f"{self.path}: no array {self.array_name!r} in the group; it has {arrays}"
            )
        return node[self.array_name]

    @property
    def array(self) -> Any:
        """The underlying zarr array."""
        return self._array

    def _read_inside(self, y: int, x: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray | None]:
        if len(self._array.shape) == 2:
            data = np.asarray(self._array[y : y + h, x : x + w])[None]  # (1, h, w)
        else:
            data = np.asarray(self._array[:, y : y + h, x : x + w])  # (C, h, w)
        data = np.array(data, dtype=self.dtype, copy=not data.flags.writeable)
        return data, nodata_mask(data, self.nodata)
