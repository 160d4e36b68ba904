"""Deterministic, tile-local random fields shared by the slide and SAR generators.

Every function here evaluates a field *at given coordinates* from a seed, so a generator can
render any tile of any pyramid level on its own, in any order, with bounded memory: nothing
needs the full-resolution image. Coordinates are level-0 pixel coordinates (floats, pixel
centres at ``i + 0.5``) given separably as a 1-D ``rows`` and a 1-D ``cols`` array; outputs are
``(len(rows), len(cols))`` float32 arrays.

Interpolation is separable: one gather along rows on the small lattice, then one along columns,
so the cost per pixel does not depend on the lattice size.

.. versionadded:: 0.1
"""

from __future__ import annotations

import concurrent.futures as cf
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "fbm",
    "hash_uniform",
    "layout_bounds",
    "lerp_index",
    "ordered_map",
    "sample_layout",
    "separable_lerp",
    "stream_seed",
    "value_noise",
]

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """SplitMix64 finaliser (wrapping uint64 arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def stream_seed(seed: int, *keys: int) -> int:
    """A 63-bit integer derived from ``seed`` and integer ``keys`` (for per-tile generators).

    Args:
        seed: base seed.
        *keys: integers (level, tile row, tile column, stream id, ...).

    Returns:
        A non-negative Python int usable as ``numpy.random.default_rng`` seed.
    """
    out = hash_uniform(seed, *[np.asarray(k) for k in keys], bits=True)
    return int(out) >> 1


def hash_uniform(seed: int, *keys: ArrayLike, bits: bool = False) -> NDArray:
    """Hash integer coordinates to uniform floats in ``[0, 1)``.

    Args:
        seed: base seed (any Python int).
        *keys: integer arrays that broadcast together (e.g. ``iy[:, None]``, ``ix[None, :]``).
        bits: return the raw uint64 hashes instead of floats.

    Returns:
        float32 array of the broadcast shape (or uint64 when ``bits``).
    """
    with np.errstate(over="ignore"):
        h = _mix64(np.asarray((seed & 0xFFFFFFFFFFFFFFFF) ^ 0x5851F42D4C957F2D, np.uint64))
        for k in keys:
            k64 = np.asarray(k).astype(np.int64).view(np.uint64)
            h = _mix64(h ^ (k64 + _GOLDEN + (h << np.uint64(6)) + (h >> np.uint64(2))))
    if bits:
        return h
    return ((h >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)).astype(np.float32)


def lerp_index(
    pos: NDArray, n: int, smooth: bool = False
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float32]]:
    """Neighbour nodes and weight of linear interpolation on a 1-D lattice.

    Args:
        pos: (P,) positions in lattice units relative to node 0; clamped to ``[0, n - 1]``.
        n: number of lattice nodes.
        smooth: use a smoothstep (C1) fade instead of linear weights.

    Returns:
        (i0, i1, f): (P,) left and right node indices and the right node's weight.
    """
    pos = np.clip(np.asarray(pos, np.float64), 0.0, n - 1)
    i0 = np.minimum(np.floor(pos).astype(np.intp), max(n - 2, 0))
    f = (pos - i0).astype(np.float32)
    if smooth:
        f = f * f * (3.0 - 2.0 * f)
    return i0, np.minimum(i0 + 1, n - 1), f


def separable_lerp(
    grid: NDArray,
    rows: tuple[NDArray, NDArray, NDArray],
    cols: tuple[NDArray, NDArray, NDArray],
) -> NDArray[np.float32]:
    """Interpolate a small grid at a separable set of points (two gathers per axis).

    Deliberately not a matrix product: BLAS would spawn threads for these thin shapes and be
    several times slower on a busy machine.

    Args:
        grid: (ny, nx) node values.
        rows: :func:`lerp_index` of the H output rows.
        cols: :func:`lerp_index` of the W output columns.

    Returns:
        (H, W) float32.
    """
    grid = np.asarray(grid, np.float32)
    r0, r1, fr = rows
    c0, c1, fc = cols
    fr = fr[:, None]
    by_row = grid[r0] * (1 - fr) + grid[r1] * fr  # (H, nx)
    return by_row[:, c0] * (1 - fc) + by_row[:, c1] * fc  # (H, W)


def value_noise(
    seed: int, rows: NDArray, cols: NDArray, cell: float, amp: float = 1.0
) -> NDArray[np.float32]:
    """Smooth value noise in ``[-1, 1]`` on a hashed lattice of spacing ``cell``.

    Args:
        seed: seed of this noise field.
        rows: (H,) level-0 row coordinates.
        cols: (W,) level-0 column coordinates.
        cell: lattice spacing in level-0 pixels (the feature size).
        amp: amplitude (applied to the small lattice, which is cheaper than to the output).

    Returns:
        (H, W) float32 field in ``[-amp, amp]``, identical wherever it is evaluated from.
    """
    gy = np.asarray(rows, np.float64) / cell
    gx = np.asarray(cols, np.float64) / cell
    y0, x0 = int(np.floor(gy.min())), int(np.floor(gx.min()))
    ny, nx = int(np.floor(gy.max())) - y0 + 2, int(np.floor(gx.max())) - x0 + 2
    iy = np.arange(y0, y0 + ny)[:, None]
    ix = np.arange(x0, x0 + nx)[None, :]
    lattice = (hash_uniform(seed, iy, ix) * 2.0 - 1.0) * np.float32(amp)  # (ny, nx)
    return separable_lerp(
        lattice, lerp_index(gy - y0, ny, smooth=True), lerp_index(gx - x0, nx, smooth=True)
    )


def fbm(
    seed: int,
    rows: NDArray,
    cols: NDArray,
    cells: Sequence[float],
    amps: Sequence[float],
    pixel: float = 1.0,
) -> NDArray[np.float32]:
    """Sum of value-noise octaves; octaves finer than ~2 output pixels are dropped.

    Dropping sub-pixel octaves is what a downsample would do to them (they average to ~0), and it
    keeps low pyramid levels cheap.

    Args:
        seed: seed of the field (each octave gets its own stream).
        rows: (H,) level-0 row coordinates.
        cols: (W,) level-0 column coordinates.
        cells: lattice spacing of each octave, in level-0 pixels.
        amps: amplitude of each octave.
        pixel: size of one output pixel in level-0 pixels (the pyramid downsample).

    Returns:
        (H, W) float32 field.
    """
    out = None
    for i, (cell, amp) in enumerate(zip(cells, amps, strict=True)):
        if cell < 2.0 * pixel or amp == 0:
            continue
        octave = value_noise(seed * 7919 + i, rows, cols, cell, amp)
        if out is None:
            out = octave
        else:
            out += octave
    return np.zeros((len(rows), len(cols)), np.float32) if out is None else out


def sample_layout(
    field: NDArray, factor: float, rows: NDArray, cols: NDArray
) -> NDArray[np.float32]:
    """Bilinearly sample a low-resolution layout field at level-0 coordinates.

    Layout pixel ``(i, j)`` covers level-0 pixels ``[i * factor, (i + 1) * factor)``; its value
    sits at the centre. Outside the layout the border value is repeated.

    Args:
        field: (h, w) layout array.
        factor: level-0 pixels per layout pixel.
        rows: (H,) level-0 row coordinates.
        cols: (W,) level-0 column coordinates.

    Returns:
        (H, W) float32 samples.
    """
    h, w = field.shape
    py = np.clip(np.asarray(rows, np.float64) / factor - 0.5, 0, h - 1)
    px = np.clip(np.asarray(cols, np.float64) / factor - 0.5, 0, w - 1)
    y0 = min(int(np.floor(py.min())), max(h - 2, 0))
    x0 = min(int(np.floor(px.min())), max(w - 2, 0))
    y1 = min(int(np.floor(py.max())) + 2, h)
    x1 = min(int(np.floor(px.max())) + 2, w)
    block = field[y0:y1, x0:x1]  # (ny, nx)
    return separable_lerp(block, lerp_index(py - y0, y1 - y0), lerp_index(px - x0, x1 - x0))


def layout_bounds(
    field: NDArray, factor: float, row_range: tuple[float, float], col_range: tuple[float, float]
) -> tuple[float, float]:
    """Min and max of a layout field over the layout pixels that a level-0 box interpolates.

    Args:
        field: (h, w) layout array.
        factor: level-0 pixels per layout pixel.
        row_range: (first, last) level-0 row coordinates of the box.
        col_range: (first, last) level-0 column coordinates of the box.

    Returns:
        (min, max): bounds of any bilinear sample inside the box.
    """
    h, w = field.shape
    y0 = int(np.clip(np.floor(row_range[0] / factor - 0.5), 0, h - 1))
    y1 = int(np.clip(np.floor(row_range[1] / factor - 0.5) + 2, 1, h))
    x0 = int(np.clip(np.floor(col_range[0] / factor - 0.5), 0, w - 1))
    x1 = int(np.clip(np.floor(col_range[1] / factor - 0.5) + 2, 1, w))
    block = field[y0:y1, x0:x1]
    return float(block.min()), float(block.max())


def ordered_map[T, R](fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``map(fn, items)`` on a thread pool, in order, with at most ``2 * workers`` in flight.

    numpy, zlib and Pillow's encoders release the GIL, so tile rendering scales over threads
    while memory stays bounded by the small look-ahead.

    Args:
        fn: function of one item.
        items: the items (consumed lazily).
        workers: number of threads; ``<= 1`` runs inline.

    Yields:
        ``fn(item)`` for each item, in input order.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    with cf.ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[cf.Future[R]] = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()
