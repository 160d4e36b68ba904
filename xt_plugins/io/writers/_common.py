"""What the block writers share: shape checks, clipping, casting, NaN -> nodata, parent folders."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import numpy as np

from ..base import clip_window

PathLike = str | os.PathLike[str]


def _chw(shape: Sequence[int]) -> tuple[int, int, int]:
    if len(shape) == 2:
        return (1, int(shape[0]), int(shape[1]))
    if len(shape) == 3:
        return (int(shape[0]), int(shape[1]), int(shape[2]))
    raise ValueError(f"shape must be (C, H, W) or (H, W), got {tuple(shape)}")


def _prepare_parent(path: PathLike) -> Path:
    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


class _BlockWriter:
    """Shared ``write(y, x, block)`` logic: shape checks, clipping, casting, NaN -> nodata."""

    path: Path
    shape: tuple[int, int, int]
    dtype: np.dtype
    nodata: float | None = None

    def _clip_block(self, y: int, x: int, block: np.ndarray) -> tuple[int, int, np.ndarray] | None:
        block = np.asarray(block)
        if block.ndim == 2:
            block = block[None]
        c, height, width = self.shape
        if block.ndim != 3 or block.shape[0] != c:
            raise ValueError(f"{self.path}: expected a ({c}, h, w) block, got {block.shape}")
        if not np.can_cast(block.dtype, self.dtype, casting="same_kind"):
            raise TypeError(
                f"{self.path}: cannot write {block.dtype} into a {self.dtype} file without "
                "losing values; convert the block first"
            )
        clipped = clip_window(int(y), int(x), block.shape[1], block.shape[2], height, width)
        if clipped is None:
            return None
        (y0, x0, h0, w0), (oy, ox) = clipped
        block = block[:, oy : oy + h0, ox : ox + w0]
        if (
            self.nodata is not None
            and not math.isnan(self.nodata)
            and np.issubdtype(block.dtype, np.floating)
        ):
            block = np.where(np.isnan(block), self.nodata, block)
        return y0, x0, block.astype(self.dtype, copy=False)

    def close(self) -> None:
        """Finish the file."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
