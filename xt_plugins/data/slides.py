"""Synthetic H&E-like whole-slide images written as pyramidal tiled TIFFs that OpenSlide opens.

A slide is described analytically: a low-resolution *layout* (signed distance to the tissue and
tumor outlines, ``mask_downsample`` level-0 pixels per layout pixel) plus hashed random fields
(stroma texture, ragged edges, one nucleus per jittered grid cell). Every tile of every pyramid
level is rendered on its own from that description at its own scale, so memory stays bounded
whatever the slide size: the full-resolution image never exists in memory, and lower levels are
rendered directly instead of downsampled from level 0.

Colours follow the Beer-Lambert model of haematoxylin (nuclei, purple-blue) and eosin (stroma,
pink) optical densities. Tumor areas have denser, larger, darker and more purple nuclei and less
eosin, a difference visible in any 256-pixel region at 0.5 microns per pixel.

The file layout is OpenSlide's "generic tiff": level 0 first, then each level downsampled by 2
as the next top-level page, all tiled; microns per pixel go into the resolution tags
(``ResolutionUnit = CENTIMETER``, ``XResolution = 1e4 / mpp``), which OpenSlide reports as
``openslide.mpp-x`` and MONAI's ``WSIReader(backend="openslide").get_mpp`` returns.

.. versionadded:: 0.1
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tifffile
from numpy.typing import NDArray
from PIL import Image
from scipy import ndimage
from tqdm.auto import tqdm

from ._noise import (
    fbm,
    hash_uniform,
    layout_bounds,
    ordered_map,
    sample_layout,
    stream_seed,
)

__all__ = ["SlideInfo", "make_slide", "make_slides", "render_slide_tile"]

Compression = Literal["jpeg", "lzw", "deflate"] | None

# Ruifrok & Johnston stain optical-density vectors (unit length), RGB order.
_H_OD = np.array([0.650, 0.704, 0.286], np.float32)
_E_OD = np.array([0.072, 0.990, 0.105], np.float32)
_GLASS_OD = np.array([0.024, 0.026, 0.016], np.float32)
#: Colour of a tile without tissue, (3,) uint8.
GLASS_RGB = np.clip(np.rint(255.0 * np.exp(-_GLASS_OD)), 0, 255).astype(np.uint8)
_LOG255_MINUS_GLASS = (np.log(255.0) - _GLASS_OD).astype(np.float32)
#: Ragged outline of each layout field: (noise stream, noise amplitude in microns); the
#: amplitude is capped at a quarter of the field's largest depth so small areas survive.
_EDGES = {"tissue_sdt": (21, 22.0), "tumor_sdt": (22, 30.0)}


@dataclass(frozen=True)
class _Nuclei:
    """One population of nuclei: one candidate nucleus per jittered grid cell (sizes in um)."""

    key: int  # hash stream of this population
    spacing: float  # grid cell side
    r_min: float  # radius range (area-equivalent)
    r_max: float
    presence: float  # probability that a cell holds a nucleus
    stain: tuple[float, float]  # haematoxylin concentration range
    elongation: tuple[float, float]  # long / short axis ratio range
    rim: float  # extra stain at the rim (hyperchromatic membrane)


_NORMAL = _Nuclei(1, 14.0, 2.6, 3.8, 0.55, (0.70, 1.00), (1.0, 1.7), 0.15)
_TUMOUR = _Nuclei(2, 10.0, 3.6, 5.2, 0.88, (1.25, 1.75), (1.0, 2.0), 0.35)


@dataclass(frozen=True, eq=False)
class SlideInfo:
    """What :func:`make_slide` wrote, with its ground truth.

    Attributes:
        path: the pyramidal TIFF.
        width: level-0 width in pixels.
        height: level-0 height in pixels.
        mpp: microns per pixel at level 0.
        label: 1 if the slide has tumor, else 0.
        tumor_fraction: tumor area / tissue area (0 for normal slides).
        tissue_mask: (ceil(height / mask_downsample), ceil(width / mask_downsample)) bool.
        tumor_mask: same shape, bool; tumor is always inside tissue.
        mask_downsample: level-0 pixels per mask pixel.
        seed: the seed that generated the slide.
        level_count: number of pyramid levels written.
    """

    path: Path
    width: int
    height: int
    mpp: float
    label: int
    tumor_fraction: float
    tissue_mask: NDArray[np.bool_]
    tumor_mask: NDArray[np.bool_]
    mask_downsample: int
    seed: int
    level_count: int


@dataclass(frozen=True, eq=False)
class _Layout:
    """Low-resolution description of a slide; distances are in level-0 pixels."""

    factor: int
    tissue_sdt: NDArray[np.float32]  # (h, w) > 0 inside tissue
    tumor_sdt: NDArray[np.float32] | None  # (h, w) > 0 inside tumor; None: no tumor
    tissue_mask: NDArray[np.bool_]
    tumor_mask: NDArray[np.bool_]


def _layout_factor(width: int, height: int) -> int:
    """Level-0 pixels per layout pixel: 64 for big slides, finer for small ones (>= 4)."""
    longest = max(width, height)
    return int(min(64, max(4, 2 ** math.floor(math.log2(max(longest / 256, 1))))))


def _signed_distance(mask: NDArray[np.bool_]) -> NDArray[np.float32]:
    """Signed Euclidean distance in mask pixels: > 0 inside, < 0 outside."""
    if mask.all():
        return np.full(mask.shape, 1e6, np.float32)
    if not mask.any():
        return np.full(mask.shape, -1e6, np.float32)
    inside = ndimage.distance_transform_edt(mask)
    outside = ndimage.distance_transform_edt(~mask)
    return (inside - outside).astype(np.float32)


def _blobs(
    seed: int,
    rows: NDArray,
    cols: NDArray,
    shapes: list[tuple[float, float, float, float, float]],
    warp: float,
    warp_cell: float,
) -> NDArray[np.float32]:
    """Union of warped ellipses ``(cy, cx, a, b, theta)``; > 0 inside (level-0 coordinates)."""
    wy = fbm(seed, rows, cols, [warp_cell, warp_cell / 3], [warp, warp / 3])
    wx = fbm(seed + 1, rows, cols, [warp_cell, warp_cell / 3], [warp, warp / 3])
    field = np.full((len(rows), len(cols)), -np.inf, np.float32)
    for cy, cx, a, b, theta in shapes:
        y = rows[:, None] + wy - cy
        x = cols[None, :] + wx - cx
        u = x * math.cos(theta) + y * math.sin(theta)
        v = -x * math.sin(theta) + y * math.cos(theta)
        field = np.maximum(field, 1.0 - np.sqrt((u / a) ** 2 + (v / b) ** 2))
    return field


def _make_layout(seed: int, width: int, height: int, tumor: bool) -> _Layout:
    """Tissue pieces and (optionally) tumor areas at layout resolution."""
    factor = _layout_factor(width, height)
    lh, lw = math.ceil(height / factor), math.ceil(width / factor)
    rows = (np.arange(lh) + 0.5) * factor  # level-0 coordinates of layout pixel centres
    cols = (np.arange(lw) + 0.5) * factor
    rng = np.random.default_rng([seed, 1])
    side = min(width, height)
    for attempt in range(20):
        shapes = []
        for _ in range(int(rng.integers(2, 6))):
            a = rng.uniform(0.15, 0.28) * side
            shapes.append(
                (
                    rng.uniform(0.2, 0.8) * height,
                    rng.uniform(0.15, 0.85) * width,
                    a,
                    a * rng.uniform(0.45, 1.0),
                    rng.uniform(0, math.pi),
                )
            )
        field = _blobs(stream_seed(seed, 10, attempt), rows, cols, shapes, 0.06 * side, side / 4)
        tissue = field > 0
        if 0.08 < tissue.mean() < 0.7:
            break
    tissue_sdt_l = _signed_distance(tissue)  # layout pixels
    area = np.zeros_like(tissue)  # not `tumor`: that is the flag
    if tumor:
        deep = np.flatnonzero(tissue_sdt_l >= max(0.5, 0.4 * float(tissue_sdt_l.max())))
        for attempt in range(20):
            shapes = []
            for _ in range(int(rng.integers(1, 4))):
                iy, ix = np.unravel_index(rng.choice(deep), tissue.shape)
                depth = float(tissue_sdt_l[iy, ix]) * factor  # level-0 pixels
                a = depth * rng.uniform(0.5, 0.85)
                shapes.append(
                    (rows[iy], cols[ix], a, a * rng.uniform(0.55, 1.0), rng.uniform(0, math.pi))
                )
            warp = 0.15 * min(s[2] for s in shapes)
            field = _blobs(stream_seed(seed, 11, attempt), rows, cols, shapes, warp, 4 * warp)
            candidate = (field > 0) & tissue
            if candidate.sum() > area.sum():
                area = candidate  # keep the largest try
            if area.sum() >= max(4, 0.03 * tissue.sum()):
                break
    return _Layout(
        factor=factor,
        tissue_sdt=tissue_sdt_l * np.float32(factor),
        tumor_sdt=_signed_distance(area) * np.float32(factor) if area.any() else None,
        tissue_mask=tissue,
        tumor_mask=area,
    )


class _Renderer:
    """Renders any tile of any pyramid level from a :class:`_Layout` and a seed."""

    def __init__(self, layout: _Layout, seed: int, mpp: float, tile: int) -> None:
        self.layout = layout
        self.seed = seed
        self.tile = tile
        self.um = 1.0 / mpp  # level-0 pixels per micron
        rng = np.random.default_rng([seed, 2])
        self.grain = rng.standard_normal((1024 + tile, 1024 + tile), dtype=np.float32)
        self.amp = {}  # level-0 pixels
        for name, (_, amp_um) in _EDGES.items():
            field = getattr(layout, name)
            if field is not None:
                self.amp[name] = min(amp_um * self.um, 0.25 * float(field.max()))

    def _ragged_sdt(self, name: str, rows: NDArray, cols: NDArray, d: float) -> NDArray[np.float32]:
        """Signed distance (level-0 px) to a layout outline made ragged by noise, (H, W)."""
        key, amp = _EDGES[name][0], self.amp[name]
        noise = fbm(stream_seed(self.seed, key), rows, cols, [2 * amp, amp / 2], [amp, amp / 4], d)
        field = getattr(self.layout, name)
        return sample_layout(field, self.layout.factor, rows, cols) + noise

    def _soft_mask(
        self, name: str, rows: NDArray, cols: NDArray, d: int
    ) -> NDArray[np.float32] | float:
        """Anti-aliased inside-ness in [0, 1] of a layout outline with ragged edges.

        Returns a scalar 0.0 / 1.0 when the whole tile is outside / inside.
        """
        field, factor = getattr(self.layout, name), self.layout.factor
        if field is None:
            return 0.0
        amp, edge = self.amp[name], max(3.0 * self.um, float(d))
        lo, hi = layout_bounds(field, factor, (rows[0], rows[-1]), (cols[0], cols[-1]))
        if hi + 1.4 * amp < -edge:  # the noise is bounded by 1.25 amp
            return 0.0
        if lo - 1.4 * amp > edge:
            return 1.0
        return np.clip(self._ragged_sdt(name, rows, cols, d) / edge + 0.5, 0.0, 1.0)

    def masks(self) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
        """Tissue and tumor masks at layout resolution, ragged edges included.

        Returns:
            (tissue, tumor): (h, w) bool each, sampled at layout pixel centres.
        """
        lay = self.layout
        rows = (np.arange(lay.tissue_mask.shape[0]) + 0.5) * lay.factor
        cols = (np.arange(lay.tissue_mask.shape[1]) + 0.5) * lay.factor
        tissue = self._ragged_sdt("tissue_sdt", rows, cols, lay.factor) > 0
        if lay.tumor_sdt is None:
            return tissue, np.zeros_like(tissue)
        tumor = self._ragged_sdt("tumor_sdt", rows, cols, lay.factor) > 0
        return tissue, tumor & tissue

    def _nuclei(self, kind: _Nuclei, level: int, ty: int, tx: int) -> NDArray[np.float32] | float:
        """(t, t) haematoxylin concentration of one nucleus population (a float when uniform)."""
        t, d = self.tile, 2**level
        spacing, r_min, r_max = (kind.spacing * self.um, kind.r_min * self.um, kind.r_max * self.um)
        if spacing / d < 3.0:
            # nuclei are below the pixel scale: their expected stain (x 0.8: the mean of
            # exp(-od) is brighter than exp(-mean od)), modulated so that it is not flat
            area = math.pi * (r_min**2 + r_min * r_max + r_max**2) / 3.0
            mean = 0.8 * kind.presence * area / spacing**2 * float(np.mean(kind.stain))
            rows = (ty * t + np.arange(t) + 0.5) * d
            cols = (tx * t + np.arange(t) + 0.5) * d
            cells = [4 * spacing, 16 * spacing]
            vary = fbm(stream_seed(self.seed, 25, kind.key), rows, cols, cells, [0.12, 0.12], d)
            return mean * (1.0 + vary)
        reach = r_max * math.sqrt(kind.elongation[1])  # longest semi-axis, level-0 pixels
        top, left = ty * t * d, tx * t * d
        cy = np.arange(
            math.floor((top - reach) / spacing), math.floor((top + t * d + reach) / spacing) + 1
        )
        cx = np.arange(
            math.floor((left - reach) / spacing), math.floor((left + t * d + reach) / spacing) + 1
        )
        key = self.seed * 131 + kind.key
        u = [hash_uniform(key, cy[:, None], cx[None, :], s) for s in range(7)]  # 7 x (ny, nx)
        iy, ix = np.nonzero(u[0] < kind.presence)
        if iy.size == 0:
            return 0.0
        cen_y = (cy[iy] + u[1][iy, ix]) * spacing  # (N,) level-0 centres
        cen_x = (cx[ix] + u[2][iy, ix]) * spacing
        radius = r_min + (r_max - r_min) * u[3][iy, ix]
        elong = kind.elongation[0] + (kind.elongation[1] - kind.elongation[0]) * u[4][iy, ix]
        theta = math.pi * u[5][iy, ix]
        stain = kind.stain[0] + (kind.stain[1] - kind.stain[0]) * u[6][iy, ix]
        semi_a, semi_b = radius * np.sqrt(elong), radius / np.sqrt(elong)
        half = math.ceil(reach / d) + 1
        off = np.arange(-half, half + 1)  # (P,)
        gy = np.floor(cen_y / d).astype(np.int64)[:, None] + off  # (N, P) level pixel rows
        gx = np.floor(cen_x / d).astype(np.int64)[:, None] + off
        dy = ((gy + 0.5) * d - cen_y[:, None]).astype(np.float32)  # (N, P) level-0 offsets
        dx = ((gx + 0.5) * d - cen_x[:, None]).astype(np.float32)
        # ellipse coordinates scaled to the unit circle, separable in (row, col): (N, P) each
        cos, sin = np.cos(theta)[:, None], np.sin(theta)[:, None]
        ua_x, ua_y = dx * (cos / semi_a[:, None]), dy * (sin / semi_a[:, None])
        ub_x, ub_y = dx * (-sin / semi_b[:, None]), dy * (cos / semi_b[:, None])
        u = ua_x[:, None, :] + ua_y[:, :, None]  # (N, P, P)
        v = ub_x[:, None, :] + ub_y[:, :, None]
        u *= u
        v *= v
        u += v
        rho = np.sqrt(u, out=u)  # (N, P, P) elliptical radius, 1 on the outline
        scale = (radius / d)[:, None, None]
        cover = np.clip((1.0 - rho) * scale + 0.5, 0.0, 1.0)
        ly, lx = gy - ty * t, gx - tx * t
        valid = ((ly >= 0) & (ly < t))[:, :, None] & ((lx >= 0) & (lx < t))[:, None, :]
        valid &= cover > 0
        flat = (ly[:, :, None] * t + lx[:, None, :])[valid]
        rim = kind.rim * stain
        # hyperchromatic rim: stain * (1 + rim * (rho - 0.5)), only where covered
        weight = cover[valid] * (
            np.broadcast_to((stain - 0.5 * rim)[:, None, None], valid.shape)[valid]
            + np.broadcast_to(rim[:, None, None], valid.shape)[valid] * rho[valid]
        )
        out = np.bincount(flat, weights=weight, minlength=t * t)
        return out.reshape(t, t).astype(np.float32)

    def render(self, level: int, ty: int, tx: int) -> NDArray[np.uint8] | None:
        """RGB tile ``(ty, tx)`` of pyramid ``level``, or None when it is bare glass.

        Args:
            level: pyramid level (downsample ``2 ** level``).
            ty: tile row.
            tx: tile column.

        Returns:
            (tile, tile, 3) uint8, or None for a tile without tissue.
        """
        t, d, um = self.tile, 2**level, self.um
        rows = (ty * t + np.arange(t) + 0.5) * d  # (t,) level-0 coordinates of pixel centres
        cols = (tx * t + np.arange(t) + 0.5) * d
        alpha = self._soft_mask("tissue_sdt", rows, cols, d)
        if np.max(alpha) <= 0.0:
            return None
        tum = self._soft_mask("tumor_sdt", rows, cols, d)
        s = self.seed
        # eosin: fibrous stroma texture, white lumens / fat in normal tissue
        eosin = 0.40 + fbm(
            stream_seed(s, 23), rows, cols, [90 * um, 25 * um, 7 * um], [0.12, 0.09, 0.06], d
        )
        holes = fbm(stream_seed(s, 24), rows, cols, [140 * um, 45 * um], [1.0, 0.35], d)
        hole = np.clip((holes - 0.45) * 5.0, 0.0, 1.0) * (1.0 - tum)
        eosin = np.clip(eosin, 0.05, None) * (1.0 - 0.9 * hole) * (1.0 - 0.3 * tum)
        haem = (0.06 + 0.10 * tum) * (1.0 - hole)
        nuc_n = self._nuclei(_NORMAL, level, ty, tx) if np.min(tum) < 1.0 else 0.0
        nuc_t = self._nuclei(_TUMOUR, level, ty, tx) if np.max(tum) > 0.0 else 0.0
        nuc_n = nuc_n * (1.0 - tum) * (1.0 - hole)
        nuc_t = nuc_t * tum
        nuclei = np.minimum(nuc_n + nuc_t, 2.5)
        haem = haem + nuclei
        eosin = eosin * (1.0 - 0.6 * np.clip(nuclei, 0.0, 1.0)) + 0.3 * nuc_t
        # per-pixel grain, drawn from a per-slide texture at a per-tile offset
        oy, ox = (int(v) for v in (hash_uniform(s, level, ty, tx, np.arange(2)) * 1024))
        grain = 1.0 + (0.07 / math.sqrt(d)) * self.grain[oy : oy + t, ox : ox + t]
        haem = np.broadcast_to(haem * alpha * grain, (t, t))  # (t, t)
        eosin = np.broadcast_to(eosin * alpha * grain, (t, t))
        od = haem[None] * _H_OD[:, None, None] + eosin[None] * _E_OD[:, None, None]  # (3, t, t)
        # 255 * exp(-(od + glass)), in place; values stay in (0, 255)
        np.subtract(_LOG255_MINUS_GLASS[:, None, None], od, out=od)
        np.exp(od, out=od)
        return od.transpose(1, 2, 0).astype(np.uint8, order="C")  # (t, t, 3)


def render_slide_tile(
    width: int,
    height: int,
    level: int,
    ty: int,
    tx: int,
    *,
    mpp: float = 0.5,
    seed: int = 0,
    tumor: bool | None = None,
    tile: int = 512,
) -> NDArray[np.uint8]:
    """Render one tile of the slide :func:`make_slide` would write, without writing a file.

    Handy to preview content or to build in-memory fixtures.

    Args:
        width: level-0 width.
        height: level-0 height.
        level: pyramid level (downsample ``2 ** level``).
        ty: tile row at that level.
        tx: tile column at that level.
        mpp: microns per pixel at level 0.
        seed: slide seed.
        tumor: whether the slide has tumor (None: random from ``seed``).
        tile: tile side in pixels.

    Returns:
        (tile, tile, 3) uint8 RGB (pixels past the level's border are rendered too).
    """
    tumor = _resolve_tumor(seed, tumor)
    renderer = _Renderer(_make_layout(seed, width, height, tumor), seed, mpp, tile)
    out = renderer.render(level, ty, tx)
    return np.broadcast_to(GLASS_RGB, (tile, tile, 3)).copy() if out is None else out


def _resolve_tumor(seed: int, tumor: bool | None) -> bool:
    if tumor is None:
        return bool(np.random.default_rng([seed, 0]).random() < 0.5)
    return bool(tumor)


def _level_shapes(width: int, height: int, tile: int) -> list[tuple[int, int]]:
    """(height, width) of each level: halved until the smaller side is at most ``tile``."""
    shapes = [(height, width)]
    while min(shapes[-1]) > tile:
        h, w = shapes[-1]
        shapes.append((math.ceil(h / 2), math.ceil(w / 2)))
    return shapes


def _jpeg(arr: NDArray[np.uint8], quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality, subsampling=2)
    return buf.getvalue()


def _lzw(arr: NDArray[np.uint8]) -> bytes:
    """LZW-compress one tile with Pillow's libtiff (no imagecodecs needed): one strip, raw."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="TIFF", compression="tiff_lzw", strip_size=2**31 - 1)
    data = buf.getvalue()
    order = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(order + "I", data, 4)
    (count,) = struct.unpack_from(order + "H", data, ifd)
    found: dict[int, int] = {}
    for i in range(count):
        tag, typ, n = struct.unpack_from(order + "HHI", data, ifd + 2 + 12 * i)
        if tag in (273, 279):  # StripOffsets, StripByteCounts
            if n != 1:
                raise RuntimeError("Pillow wrote more than one LZW strip for a tile")
            fmt = "H" if typ == 3 else "I"
            (found[tag],) = struct.unpack_from(order + fmt, data, ifd + 10 + 12 * i)
    return data[found[273] : found[273] + found[279]]


def _encode(arr: NDArray[np.uint8], compression: Compression, quality: int) -> bytes:
    """Encode one (t, t, 3) tile as the bytes of one TIFF tile segment."""
    arr = np.ascontiguousarray(arr)
    if compression == "jpeg":
        return _jpeg(arr, quality)
    if compression == "lzw":
        return _lzw(arr)
    if compression == "deflate":
        return zlib.compress(arr.tobytes(), 6)
    return arr.tobytes()


@contextlib.contextmanager
def _pre_encoded_segments(tag: int) -> Iterator[None]:
    """Let tifffile accept pre-encoded tiles of ``tag`` when imagecodecs is not installed.

    tifffile looks its encoder up even when it is handed encoded bytes (which it then writes
    as-is); the placeholder is never called and is removed afterwards.
    """
    registry = tifffile.TIFF.COMPRESSORS
    try:
        registry[tag]
        added = False
    except KeyError:

        def _placeholder(*args: object, **kwargs: object) -> bytes:
            raise RuntimeError("xt_plugins writes pre-encoded tiles only")

        registry._codecs[tag] = _placeholder
        added = True
    try:
        yield
    finally:
        if added:
            registry._codecs.pop(tag, None)


def make_slide(
    path: str | os.PathLike,
    width: int,
    height: int,
    *,
    mpp: float = 0.5,
    seed: int = 0,
    tumor: bool | None = None,
    tile: int = 512,
    compression: Compression = "jpeg",
    quality: int = 90,
    workers: int | None = None,
    progress: bool = False,
) -> SlideInfo:
    """Write a synthetic H&E-like whole-slide image as a pyramidal tiled TIFF.

    Memory is bounded by a few tiles plus the low-resolution layout (``mask_downsample`` is 64
    for slides over 16k pixels), so 100k x 100k slides work.

    Args:
        path: output ``.tiff`` path (parent folders are created).
        width: level-0 width in pixels.
        height: level-0 height in pixels.
        mpp: microns per pixel at level 0 (written to the TIFF resolution tags).
        seed: seed of everything: layout, label (when ``tumor`` is None) and texture.
        tumor: whether to add tumor areas; None picks it at random from ``seed``.
        tile: TIFF tile side in pixels (a multiple of 16).
        compression: "jpeg" (lossy, small), "lzw" or "deflate" (lossless), or None.
        quality: JPEG quality.
        workers: rendering threads (default: up to 4, at most the CPU count).
        progress: show a tqdm bar over tiles.

    Returns:
        The slide's :class:`SlideInfo` (ground-truth masks included).

    Raises:
        ValueError: on a non-positive size or mpp, a tile that is not a multiple of 16, or an
            unknown compression.
    """
    if width <= 0 or height <= 0 or mpp <= 0:
        raise ValueError(f"width, height and mpp must be positive, got {width}, {height}, {mpp}")
    if tile <= 0 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16 (TIFF rule), got {tile}")
    tags = {"jpeg": 7, "lzw": 5, "deflate": 8, None: 1}
    if compression not in tags:
        raise ValueError(f"compression must be one of {list(tags)}, got {compression!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tumor = _resolve_tumor(seed, tumor)
    layout = _make_layout(seed, width, height, tumor)
    renderer = _Renderer(layout, seed, mpp, tile)
    shapes = _level_shapes(width, height, tile)
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    glass = _encode(np.broadcast_to(GLASS_RGB, (tile, tile, 3)), compression, quality)
    n_tiles = sum(math.ceil(h / tile) * math.ceil(w / tile) for h, w in shapes)
    bar = tqdm(total=n_tiles, disable=not progress, unit="tile", desc=path.name, leave=False)

    def encode(job: tuple[int, int, int]) -> bytes:
        arr = renderer.render(*job)
        return glass if arr is None else _encode(arr, compression, quality)

    def segments(level: int, h: int, w: int) -> Iterator[bytes]:
        jobs = (
            (level, ty, tx)
            for ty in range(math.ceil(h / tile))
            for tx in range(math.ceil(w / tile))
        )
        for data in ordered_map(encode, jobs, workers):
            bar.update()
            yield data

    raw_bytes = sum(3 * h * w for h, w in shapes)
    extra = {"photometric": "rgb"}
    if compression == "jpeg":
        extra = {"photometric": "ycbcr", "subsampling": (2, 2)}
    try:
        with (
            _pre_encoded_segments(tags[compression]),
            tifffile.TiffWriter(path, bigtiff=raw_bytes > 2**31) as tw,
        ):
            for level, (h, w) in enumerate(shapes):
                res = 1e4 / (mpp * 2**level)  # pixels per centimetre
                tw.write(
                    segments(level, h, w),
                    shape=(h, w, 3),
                    dtype=np.uint8,
                    tile=(tile, tile),
                    compression=compression,
                    resolution=(res, res),
                    resolutionunit="CENTIMETER",
                    subfiletype=1 if level else 0,
                    description=f"xt-plugins synthetic slide seed={seed} mpp={mpp}"
                    if not level
                    else None,
                    metadata=None,
                    software="xt-plugins",
                    **extra,
                )
    finally:
        bar.close()
    tissue_mask, tumor_mask = renderer.masks()
    if tumor and not tumor_mask.any():  # tumor smaller than a mask pixel after the ragging
        tumor_mask = layout.tumor_mask & tissue_mask
    return SlideInfo(
        path=path,
        width=width,
        height=height,
        mpp=mpp,
        label=int(tumor),
        tumor_fraction=float(tumor_mask.sum()) / max(int(tissue_mask.sum()), 1),
        tissue_mask=tissue_mask,
        tumor_mask=tumor_mask,
        mask_downsample=layout.factor,
        seed=seed,
        level_count=len(shapes),
    )


def make_slides(
    out_dir: str | os.PathLike,
    n: int = 6,
    size: tuple[int, int] = (40000, 30000),
    *,
    mpp: float = 0.5,
    seed: int = 0,
    compression: Compression = "jpeg",
    tile: int = 512,
    workers: int | None = None,
    progress: bool = True,
) -> list[SlideInfo]:
    """Write a small labelled slide collection with balanced tumor / normal labels.

    Writes ``out_dir/slide_XXX.tiff``, ``out_dir/labels.csv`` (columns ``slide, label,
    tumor_fraction, width, height, mpp``) and low-resolution masks
    ``out_dir/masks/slide_XXX_tumor.png`` and ``..._tissue.png`` (255 = inside; one mask pixel
    covers ``mask_downsample`` level-0 pixels, see :class:`SlideInfo`).

    Args:
        out_dir: output folder (created).
        n: number of slides; labels alternate in a seeded random order (``n // 2`` tumor).
        size: (width, height) of every slide at level 0.
        mpp: microns per pixel at level 0.
        seed: collection seed; slide ``i`` gets its own seed derived from it.
        compression: see :func:`make_slide`.
        tile: TIFF tile side.
        workers: rendering threads per slide.
        progress: show tqdm bars (slides, and tiles of the current slide).

    Returns:
        One :class:`SlideInfo` per slide, in file order.
    """
    import pandas as pd

    out = Path(out_dir)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 3])
    labels = rng.permutation(np.arange(n) % 2)
    width, height = size
    infos = []
    for i in tqdm(range(n), disable=not progress, unit="slide", desc="slides"):
        info = make_slide(
            out / f"slide_{i:03d}.tiff",
            width,
            height,
            mpp=mpp,
            seed=stream_seed(seed, 4, i) % 2**31,
            tumor=bool(labels[i]),
            tile=tile,
            compression=compression,
            workers=workers,
            progress=progress,
        )
        Image.fromarray(info.tumor_mask.astype(np.uint8) * 255).save(
            out / "masks" / f"slide_{i:03d}_tumor.png"
        )
        Image.fromarray(info.tissue_mask.astype(np.uint8) * 255).save(
            out / "masks" / f"slide_{i:03d}_tissue.png"
        )
        infos.append(info)
    pd.DataFrame(
        {
            "slide": [s.path.name for s in infos],
            "label": [s.label for s in infos],
            "tumor_fraction": [s.tumor_fraction for s in infos],
            "width": [s.width for s in infos],
            "height": [s.height for s in infos],
            "mpp": [s.mpp for s in infos],
        }
    ).to_csv(out / "labels.csv", index=False)
    return infos
