"""A long-range task that region-only models cannot solve: is the circle left of the square?

Each image is a mosaic of textured regions (one independent texture per region of the model's
region grid). One region holds a small filled circle, another region in a *different column*
holds a small filled square of the same colour statistics. The label is 1 when the circle lies
left of the square. Because the two marks are in different columns, the label is decided by the
columns of two far-apart regions, never by what any single region contains.

Why a bag of regions cannot solve it: every region is rendered on its own from its own texture
key, and each mark lies wholly inside its region. Swapping the circle's region with the square's
region (texture keys included, :func:`swap_marks`) gives an image whose regions are exactly the
same multiset of pixel tiles, with the opposite label. Region keys are drawn i.i.d., so this swap
maps the sample distribution onto itself: any model that only sees an unordered set of region
features (a region encoder + position-free pooling) scores exactly chance in expectation.

Everything is deterministic in ``(seed, index)``; labels alternate with the index parity, so any
even-length range of indices is exactly balanced. The texture and the mark positions are drawn
independently of the label.

.. versionadded:: 0.1
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor
from torch.utils.data import Dataset

from ._noise import stream_seed

__all__ = [
    "TEXTURE_MEAN",
    "TEXTURE_STD",
    "ContextTaskSpec",
    "ContextTaskDataset",
    "sample_context_task",
    "render_context_task",
    "swap_marks",
]


#: Mean and standard deviation of the background pixels (every channel): normalise with these,
#: ``(x - TEXTURE_MEAN) / TEXTURE_STD``, so the texture is ~N(0, 1) and the marks stand out.
TEXTURE_MEAN = 0.375
TEXTURE_STD = 0.08


@dataclass(frozen=True)
class ContextTaskSpec:
    """Everything needed to render one sample of the circle-left-of-square task.

    Args:
        height: image height in pixels (a multiple of ``region``).
        width: image width in pixels (a multiple of ``region``).
        region: region side in pixels (the region grid the marks are placed on).
        circle: (y, x) pixel centre of the circle.
        square: (y, x) pixel centre of the square.
        mark_size: circle diameter and square side, in pixels.
        circle_rgb: fill colour of the circle, values in [0, 1].
        square_rgb: fill colour of the square, values in [0, 1].
        tiles: texture key of each region, in scan (row-major) order.
    """

    height: int
    width: int
    region: int
    circle: tuple[int, int]
    square: tuple[int, int]
    mark_size: int
    circle_rgb: tuple[float, float, float]
    square_rgb: tuple[float, float, float]
    tiles: tuple[int, ...]

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of the region grid."""
        return self.height // self.region, self.width // self.region

    @property
    def label(self) -> int:
        """1 if the circle's centre is left of the square's centre, else 0."""
        return int(self.circle[1] < self.square[1])

    def region_of(self, point: tuple[int, int]) -> tuple[int, int]:
        """(row, col) of the region that holds pixel ``point`` = (y, x)."""
        return point[0] // self.region, point[1] // self.region


def _check_geometry(height: int, width: int, region: int, mark_size: int) -> None:
    if region <= 0 or height <= 0 or width <= 0:
        raise ValueError(f"sizes must be positive, got {height} x {width}, region {region}")
    if height % region or width % region:
        raise ValueError(
            f"image {height} x {width} must be a multiple of the region size {region} "
            "(padded border regions would tell the model where the image ends)"
        )
    if width // region < 2:
        raise ValueError(f"need at least 2 region columns, got {width // region}")
    if not 3 <= mark_size <= region // 2:
        raise ValueError(f"mark_size must be in 3..{region // 2} for {region}-px regions")


def sample_context_task(
    seed: int,
    index: int,
    size: int | tuple[int, int] = 512,
    region: int = 64,
    mark_size: int | None = None,
) -> ContextTaskSpec:
    """Draw sample ``index`` of the task with seed ``seed`` (deterministic).

    The label is ``index % 2``. Two distinct region columns and two region rows are drawn
    uniformly; the circle goes to the left column for label 1, to the right one for label 0.
    Each mark lies wholly inside its region, at least ``mark_size / 4`` pixels from its edges.

    Args:
        seed: dataset seed (different seeds give disjoint-looking datasets).
        index: sample index (>= 0).
        size: image side, or (height, width); multiples of ``region``.
        region: region side in pixels.
        mark_size: circle diameter / square side (default ``region // 4``).

    Returns:
        The sample description; render it with :func:`render_context_task`.

    Raises:
        ValueError: if the geometry does not fit (see :class:`ContextTaskSpec`).
    """
    height, width = (size, size) if isinstance(size, int) else size
    mark_size = region // 4 if mark_size is None else mark_size
    _check_geometry(height, width, region, mark_size)
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    rows, cols = height // region, width // region
    rng = np.random.default_rng(stream_seed(seed, index, 0xC0))
    label = index % 2
    left, right = np.sort(rng.choice(cols, size=2, replace=False))
    row_a, row_b = rng.integers(0, rows, size=2)
    margin = max(1, mark_size // 4)
    lo, hi = margin + mark_size // 2, region - margin - (mark_size - mark_size // 2)
    offsets = rng.integers(lo, hi + 1, size=(2, 2))  # (mark, (y, x)) inside the region

    def centre(row: int, col: int, off: NDArray) -> tuple[int, int]:
        return int(row * region + off[0]), int(col * region + off[1])

    first = centre(row_a, left, offsets[0])  # the mark in the left column
    second = centre(row_b, right, offsets[1])
    circle, square = (first, second) if label == 1 else (second, first)
    colours = rng.uniform(0.75, 1.0, size=(2, 3))
    tiles = rng.integers(0, 2**62, size=rows * cols)
    return ContextTaskSpec(
        height=height,
        width=width,
        region=region,
        circle=circle,
        square=square,
        mark_size=mark_size,
        circle_rgb=tuple(float(c) for c in colours[0]),
        square_rgb=tuple(float(c) for c in colours[1]),
        tiles=tuple(int(t) for t in tiles),
    )


def swap_marks(spec: ContextTaskSpec) -> ContextTaskSpec:
    """The same sample with the circle's and the square's regions exchanged.

    Each mark moves, with the texture of its region, to the other mark's region (same offset
    inside the region). The rendered image has exactly the same multiset of region tiles as
    ``spec``'s, and the opposite label.

    Args:
        spec: a sample with the marks in different regions.

    Returns:
        The swapped sample.
    """
    r = spec.region
    (cr, cc), (sr, sc) = spec.region_of(spec.circle), spec.region_of(spec.square)
    cols = spec.grid[1]
    tiles = list(spec.tiles)
    a, b = cr * cols + cc, sr * cols + sc
    tiles[a], tiles[b] = tiles[b], tiles[a]
    circle = (sr * r + spec.circle[0] % r, sc * r + spec.circle[1] % r)
    square = (cr * r + spec.square[0] % r, cc * r + spec.square[1] % r)
    return dataclasses.replace(spec, circle=circle, square=square, tiles=tuple(tiles))


def _textures(keys: tuple[int, ...], region: int) -> NDArray[np.float32]:
    """Region backgrounds, (R, 3, region, region) in about [0.1, 0.7], each from its key alone.

    A grey level with a small colour tint, three octaves of smooth value noise (lattices of
    3, 5 and 9 nodes per side, bilinearly upsampled) and per-pixel Gaussian noise.
    """
    lattices: list[list[NDArray]] = [[], [], []]
    flat = np.empty((len(keys), 3 + 3 * region * region), np.float32)
    for i, key in enumerate(keys):
        rng = np.random.default_rng(key)
        for octave, nodes in enumerate((3, 5, 9)):
            lattices[octave].append(rng.uniform(-1.0, 1.0, size=(nodes, nodes)))
        flat[i, :3] = rng.uniform(0.3, 0.45) + rng.uniform(-0.04, 0.04, size=3)
        flat[i, 3:] = rng.normal(0.0, 0.03, size=3 * region * region)
    lum = torch.zeros(len(keys), 1, region, region)
    for amp, lattice in zip((0.1, 0.07, 0.05), lattices, strict=True):
        nodes = torch.from_numpy(np.stack(lattice)).float()[:, None]  # (R, 1, n, n)
        lum += amp * F.interpolate(
            nodes, size=(region, region), mode="bilinear", align_corners=True
        )
    base = flat[:, :3, None, None]  # (R, 3, 1, 1)
    noise = flat[:, 3:].reshape(len(keys), 3, region, region)
    return base + lum.numpy() + noise


def _stamp(
    image: NDArray[np.float32],
    centre: tuple[int, int],
    size: int,
    rgb: tuple[float, float, float],
    circle: bool,
) -> None:
    """Fill a circle (diameter ``size``) or an axis-aligned square (side ``size``) in place."""
    y0, x0 = centre[0] - size // 2, centre[1] - size // 2
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    if circle:
        r = size / 2.0
        inside = (yy - r) ** 2 + (xx - r) ** 2 <= r * r
    else:
        inside = np.ones((size, size), bool)
    patch = image[:, y0 : y0 + size, x0 : x0 + size]  # (3, size, size) view
    patch[:, inside] = np.asarray(rgb, np.float32)[:, None]


def render_context_task(spec: ContextTaskSpec) -> NDArray[np.float32]:
    """Render a sample to a (3, height, width) float32 image in [0, 1].

    Every region is rendered on its own from its texture key (plus the mark it holds), so the
    pixels of a region do not depend on where in the image the region sits.

    Args:
        spec: the sample (see :func:`sample_context_task`).

    Returns:
        (3, H, W) float32 array.
    """
    r = spec.region
    rows, cols = spec.grid
    tiles = _textures(spec.tiles, r)  # (R, 3, r, r)
    image = tiles.reshape(rows, cols, 3, r, r).transpose(2, 0, 3, 1, 4).reshape(3, rows * r, -1)
    image = np.ascontiguousarray(image)
    _stamp(image, spec.circle, spec.mark_size, spec.circle_rgb, circle=True)
    _stamp(image, spec.square, spec.mark_size, spec.square_rgb, circle=False)
    return np.clip(image, 0.0, 1.0, out=image)


class ContextTaskDataset(Dataset[tuple[Tensor, int]]):
    """Images of the circle-left-of-square task, generated on the fly from ``(seed, index)``.

    Args:
        length: number of samples (indices ``0 .. length - 1``; an even length is balanced).
        seed: dataset seed; use different seeds for training and held-out data.
        size: image side, or (height, width); multiples of ``region``.
        region: region side in pixels (use the model's region size).
        mark_size: circle diameter / square side (default ``region // 4``).
        normalize: return ``(x - TEXTURE_MEAN) / TEXTURE_STD`` instead of [0, 1] pixels.

    Example:
        >>> ds = ContextTaskDataset(8, seed=0, size=256, region=64)
        >>> image, label = ds[1]
        >>> tuple(image.shape), label
        ((3, 256, 256), 1)

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        length: int,
        seed: int = 0,
        size: int | tuple[int, int] = 512,
        region: int = 64,
        mark_size: int | None = None,
        normalize: bool = False,
    ) -> None:
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        self.length = length
        self.seed = seed
        self.size = size
        self.region = region
        self.mark_size = mark_size
        self.normalize = normalize
        sample_context_task(seed, 0, size, region, mark_size)  # validate the geometry now

    def __len__(self) -> int:
        return self.length

    def spec(self, index: int) -> ContextTaskSpec:
        """The description of sample ``index``."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        return sample_context_task(self.seed, index, self.size, self.region, self.mark_size)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        """``(image (3, H, W) float32, label)`` of sample ``index``."""
        spec = self.spec(index)
        image = render_context_task(spec)
        if self.normalize:
            image = (image - TEXTURE_MEAN) / TEXTURE_STD
        return torch.from_numpy(image), spec.label
