"""Synthetic xView3-style Sentinel-1 scenes: VV / VH backscatter in dB with vessel labels.

A scene folder holds ``VV_dB.tif`` and ``VH_dB.tif`` (float32 dB, tiled GeoTIFFs on one grid,
nodata ``-9999``), optionally ``bathymetry.tif`` (elevation in metres, negative at sea), and
``detections.csv`` with xView3's label columns::

    detect_scene_row, detect_scene_column, is_vessel, is_fishing, vessel_length_m,
    distance_from_shore_km, detect_x, detect_y

(``detect_x`` / ``detect_y`` are the pixel centre in the scene CRS; ``vessel_length_m`` is NaN
and ``is_fishing`` False for non-vessel objects.)

Content: gamma-speckled sea (VV ~ -20 dB, VH ~ -27 dB, slow wind and incidence-angle trends),
land on one side behind a fractal coastline (brighter, textured), small islands, oriented
vessel blobs sized from their length with faint wakes and sidelobe crosses, bright fixed
platforms near the coast (``is_vessel`` False), and fishing vessels gathered in clusters. The
scene is generated window by window from a seed and a low-resolution layout, so no
full-resolution band is ever held in memory (30000 x 30000 scenes work).

.. versionadded:: 0.1
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from numpy.typing import NDArray
from rasterio.transform import Affine, from_origin
from rasterio.windows import Window
from scipy import ndimage
from tqdm.auto import tqdm

from ..io.scene import LABEL_COLUMNS
from ._noise import fbm, ordered_map, sample_layout, stream_seed

__all__ = ["DETECTION_COLUMNS", "NODATA", "SceneInfo", "make_sar_scene", "make_sar_scenes"]

#: Value of pixels outside the swath.
NODATA = -9999.0
#: Label columns, in order (xView3 names), then the map coordinates of the pixel centre.
DETECTION_COLUMNS = [*LABEL_COLUMNS, "detect_x", "detect_y"]
_LOOKS = 4.4  # equivalent number of looks of Sentinel-1 GRD
_KIND_VESSEL, _KIND_FISHING, _KIND_PLATFORM = 0, 1, 2


@dataclass(frozen=True, eq=False)
class SceneInfo:
    """What :func:`make_sar_scene` wrote, with its labels.

    Attributes:
        dir: the scene folder.
        height: rows.
        width: columns.
        crs: coordinate reference system (e.g. ``"EPSG:32631"``).
        transform: pixel -> map affine transform (north up).
        detections: one row per object, columns :data:`DETECTION_COLUMNS`.
        pixel_size: metres per pixel.
        land_mask: (ceil(height / mask_downsample), ceil(width / mask_downsample)) bool.
        mask_downsample: scene pixels per mask pixel.
        seed: the seed that generated the scene.
        bands: file name of each written band, e.g. ``{"VV": "VV_dB.tif", ...}``.
    """

    dir: Path
    height: int
    width: int
    crs: str
    transform: Affine
    detections: pd.DataFrame
    pixel_size: float
    land_mask: NDArray[np.bool_]
    mask_downsample: int
    seed: int
    bands: dict[str, str]


@dataclass(frozen=True, eq=False)
class _Objects:
    """Point objects; positions are scene pixel centres, sizes in pixels, intensities linear."""

    row: NDArray[np.int64]  # (N,)
    col: NDArray[np.int64]
    kind: NDArray[np.int64]
    length_m: NDArray[np.float64]  # NaN for platforms
    heading: NDArray[np.float64]  # radians, direction of travel
    vv: NDArray[np.float64]  # peak linear intensity
    vh: NDArray[np.float64]
    reach: NDArray[np.float64]  # half side of the bounding box, pixels

    def __len__(self) -> int:
        return len(self.row)


@dataclass(frozen=True, eq=False)
class _SceneLayout:
    """Low-resolution description of a scene (distances in scene pixels)."""

    factor: int
    land_sdt: NDArray[np.float32]  # (h, w) > 0 on land
    shore_km: NDArray[np.float32]  # (h, w) distance to the nearest land, km (0 on land)
    land_mask: NDArray[np.bool_]
    corner: tuple[int, float]  # which corner (0..3), size as a fraction of the diagonal sum
    stripes: list[tuple[int, int]]  # (first row, height) of each nodata stripe
    wind_tilt: float  # dB across the swath (incidence-angle trend)


def _layout_factor(height: int, width: int) -> int:
    longest = max(height, width)
    return int(min(32, max(4, 2 ** math.floor(math.log2(max(longest / 128, 1))))))


def _make_layout(
    seed: int, height: int, width: int, pixel_size: float, nodata: bool
) -> _SceneLayout:
    """Coastline, islands, swath border and stripes at layout resolution."""
    factor = _layout_factor(height, width)
    lh, lw = math.ceil(height / factor), math.ceil(width / factor)
    rows = (np.arange(lh) + 0.5) * factor  # scene coordinates of layout pixel centres
    cols = (np.arange(lw) + 0.5) * factor
    rng = np.random.default_rng([seed, 1])
    side = rng.integers(4)  # land along the top, right, bottom or left edge
    extent = height if side in (0, 2) else width
    depth = {
        0: rows[:, None] + 0 * cols[None, :],
        1: width - cols[None, :] + 0 * rows[:, None],
        2: height - rows[:, None] + 0 * cols[None, :],
        3: cols[None, :] + 0 * rows[:, None],
    }[int(side)]  # (lh, lw) distance from the land edge
    size = max(height, width)
    coast = extent * rng.uniform(0.15, 0.32)
    wiggle = fbm(
        stream_seed(seed, 2),
        rows,
        cols,
        [size / 3, size / 9, size / 27],
        [0.07 * size, 0.03 * size, 0.012 * size],
    )
    field = coast - depth + wiggle  # > 0 on land
    land = field > 0
    for _ in range(int(rng.integers(0, 4))):  # islands
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        r = rng.uniform(0.01, 0.04) * size
        land |= (rows[:, None] - cy) ** 2 + (cols[None, :] - cx) ** 2 < r**2
    inside = ndimage.distance_transform_edt(land)
    outside = ndimage.distance_transform_edt(~land)
    land_sdt = ((inside - outside) * factor).astype(np.float32)
    shore_km = (outside * factor * pixel_size / 1000.0).astype(np.float32)
    stripes: list[tuple[int, int]] = []
    corner = (0, 0.0)
    if nodata:
        corner = (int(rng.integers(4)), float(rng.uniform(0.08, 0.2)))
        for _ in range(int(rng.integers(1, 3))):
            stripes.append((int(rng.uniform(0.1, 0.9) * height), int(rng.integers(6, 24))))
    return _SceneLayout(
        factor=factor,
        land_sdt=land_sdt,
        shore_km=shore_km,
        land_mask=land,
        corner=corner,
        stripes=stripes,
        wind_tilt=float(rng.uniform(-3.0, 3.0)),
    )


def _nodata_mask(
    layout: _SceneLayout, height: int, width: int, rows: NDArray, cols: NDArray
) -> NDArray[np.bool_]:
    """(len(rows), len(cols)) True outside the swath: a corner triangle and full-width stripes."""
    which, frac = layout.corner
    fy = rows[:, None] / height  # (h, 1) in [0, 1]
    fx = cols[None, :] / width  # (1, w)
    if which in (1, 2):
        fx = 1.0 - fx
    if which in (2, 3):
        fy = 1.0 - fy
    out = (fy + fx < 2.0 * frac) if frac > 0 else np.zeros((len(rows), len(cols)), bool)
    out = np.broadcast_to(out, (len(rows), len(cols))).copy()
    for start, n in layout.stripes:
        out[(rows >= start) & (rows < start + n)] = True
    return out


def _place_objects(
    seed: int,
    layout: _SceneLayout,
    height: int,
    width: int,
    pixel_size: float,
    n_vessels: int | None,
) -> _Objects:
    """Draw vessels (some fishing, in clusters) and platforms at valid sea positions."""
    rng = np.random.default_rng([seed, 3])
    margin = 12

    def valid(r: NDArray, c: NDArray, min_shore_km: float, max_shore_km: float = np.inf) -> NDArray:
        inside = (r >= margin) & (r < height - margin) & (c >= margin) & (c < width - margin)
        r, c = np.clip(r, 0, height - 1), np.clip(c, 0, width - 1)
        iy = np.minimum(r // layout.factor, layout.shore_km.shape[0] - 1)
        ix = np.minimum(c // layout.factor, layout.shore_km.shape[1] - 1)
        shore = layout.shore_km[iy, ix]
        ok = inside & (shore >= min_shore_km) & (shore <= max_shore_km)
        for dy in (-margin, 0, margin):  # keep the object's surroundings inside the swath
            for dx in (-margin, 0, margin):
                rr, cc = np.clip(r + dy, 0, height - 1), np.clip(c + dx, 0, width - 1)
                ok &= ~_nodata_pointwise(layout, height, width, rr + 0.5, cc + 0.5)
        return ok

    def draw(
        n: int,
        min_km: float,
        max_km: float = np.inf,
        centre: NDArray | None = None,
        spread: float = 0.0,
    ) -> NDArray:
        """Up to ``n`` valid (row, col) positions: uniform, or Gaussian around ``centre``."""
        got = np.zeros((0, 2), np.int64)
        for _ in range(50):
            if len(got) >= n:
                break
            k = 4 * (n - len(got)) + 16
            if centre is None:
                pts = np.stack([rng.integers(0, height, k), rng.integers(0, width, k)], 1)
            else:
                pts = np.rint(np.asarray(centre) + rng.normal(0, spread, (k, 2))).astype(np.int64)
            pts = pts[valid(pts[:, 0], pts[:, 1], min_km, max_km)]
            got = np.concatenate([got, pts])
        return got[:n]

    sea_km2 = float((~layout.land_mask).mean()) * height * width * (pixel_size / 1000) ** 2
    if n_vessels is None:
        n_vessels = max(8, round(sea_km2 / 40))
    min_km = 0.4
    n_fishing = round(0.35 * n_vessels)
    centres = draw(int(rng.integers(1, 4)), 2.0)
    fishing = [np.zeros((0, 2), np.int64)]
    if len(centres) and n_fishing:
        per = np.diff(np.linspace(0, n_fishing, len(centres) + 1).round().astype(int))
        spread = 1500.0 / pixel_size
        fishing = [
            draw(int(m), min_km, centre=c, spread=spread) for c, m in zip(centres, per, strict=True)
        ]
    fishing_pts = np.concatenate(fishing)
    other_pts = draw(n_vessels - len(fishing_pts), min_km)
    platform_pts = draw(max(1, n_vessels // 6), 0.5, 8.0)
    pts = np.concatenate([other_pts, fishing_pts, platform_pts])
    kind = np.concatenate(
        [
            np.full(len(other_pts), _KIND_VESSEL),
            np.full(len(fishing_pts), _KIND_FISHING),
            np.full(len(platform_pts), _KIND_PLATFORM),
        ]
    )
    # drop objects that would touch an earlier one
    keep: list[int] = []
    for i in range(len(pts)):
        if not keep or (np.abs(pts[keep] - pts[i]).max(axis=1) > 6).all():
            keep.append(i)
    pts, kind = pts[keep], kind[keep]
    n = len(pts)
    length = np.where(
        kind == _KIND_FISHING,
        rng.uniform(12, 45, n),
        np.clip(rng.lognormal(math.log(80.0), 0.6, n), 20, 350),
    )
    length = np.where(kind == _KIND_PLATFORM, np.nan, length)
    vv_db = np.where(
        kind == _KIND_PLATFORM,
        rng.uniform(8, 15, n),
        np.clip(rng.uniform(0, 8, n) + 6 * np.log10(np.nan_to_num(length, nan=60) / 60), -2, 12),
    )
    vh_db = vv_db - np.where(kind == _KIND_PLATFORM, rng.uniform(2, 4, n), rng.uniform(4, 8, n))
    length_px = np.nan_to_num(length, nan=50.0) / pixel_size
    reach = np.where(kind == _KIND_PLATFORM, 6.0, np.ceil(length_px * 4.5 + 8))
    return _Objects(
        row=pts[:, 0].astype(np.int64),
        col=pts[:, 1].astype(np.int64),
        kind=kind.astype(np.int64),
        length_m=length.astype(np.float64),
        heading=rng.uniform(0, 2 * math.pi, n),
        vv=10.0 ** (vv_db / 10.0),
        vh=10.0 ** (vh_db / 10.0),
        reach=reach,
    )


def _nodata_pointwise(
    layout: _SceneLayout, height: int, width: int, r: NDArray, c: NDArray
) -> NDArray:
    """:func:`_nodata_mask` at scattered points ``(r[i], c[i])``."""
    which, frac = layout.corner
    fy, fx = r / height, c / width
    if which in (1, 2):
        fx = 1.0 - fx
    if which in (2, 3):
        fy = 1.0 - fy
    out = (fy + fx < 2.0 * frac) if frac > 0 else np.zeros(np.shape(r), bool)
    for start, n in layout.stripes:
        out = out | ((r >= start) & (r < start + n))
    return out


def _stamp_objects(
    objects: _Objects,
    r0: int,
    c0: int,
    h: int,
    w: int,
    pixel_size: float,
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
    """Target and wake intensities of the objects touching a window.

    Returns:
        (vv, vh, wake): (h, w) float32 linear intensities; ``wake`` multiplies the sea mean
        (before speckle), ``vv`` / ``vh`` are added after speckle.
    """
    vv = np.zeros((h, w), np.float32)
    vh = np.zeros((h, w), np.float32)
    wake = np.zeros((h, w), np.float32)
    near = (
        (objects.row + objects.reach >= r0)
        & (objects.row - objects.reach < r0 + h)
        & (objects.col + objects.reach >= c0)
        & (objects.col - objects.reach < c0 + w)
    )
    for i in np.flatnonzero(near):
        reach = int(objects.reach[i])
        ya, yb = max(r0, objects.row[i] - reach), min(r0 + h, objects.row[i] + reach + 1)
        xa, xb = max(c0, objects.col[i] - reach), min(c0 + w, objects.col[i] + reach + 1)
        dy = (np.arange(ya, yb) - objects.row[i]).astype(np.float32)[:, None]  # (ph, 1)
        dx = (np.arange(xa, xb) - objects.col[i]).astype(np.float32)[None, :]  # (1, pw)
        win = (slice(ya - r0, yb - r0), slice(xa - c0, xb - c0))
        if objects.kind[i] == _KIND_PLATFORM:
            half = 1.0 + (i % 3) * 0.5  # 3 to 6 pixels across
            box = np.clip(half + 0.5 - np.maximum(np.abs(dy), np.abs(dx)), 0, 1)
            vv[win] += objects.vv[i] * box
            vh[win] += objects.vh[i] * box
            continue
        length_px = objects.length_m[i] / pixel_size
        heading = objects.heading[i]
        along = dx * math.sin(heading) - dy * math.cos(heading)  # rows grow southwards
        across = dx * math.cos(heading) + dy * math.sin(heading)
        semi_long = max(length_px / 2, 0.8)
        semi_short = max(length_px / 12, 0.7)  # beam ~ length / 6
        # generalised Gaussian (order 4): flat-topped hull with a soft, short fall-off
        blob = np.exp(-(((along / semi_long) ** 2 + (across / semi_short) ** 2) ** 2))
        # sidelobe cross along image rows / columns for bright targets
        lobes = 0.02 * (
            np.exp(-np.abs(dx) / 4.0) * (dy == 0) + np.exp(-np.abs(dy) / 4.0) * (dx == 0)
        )
        vv[win] += objects.vv[i] * (blob + lobes)
        vh[win] += objects.vh[i] * blob
        # turbulent wake: a faint bright streak behind the ship
        behind = -along - length_px / 2
        wake_len = 4.0 * length_px + 4.0
        streak = (
            np.exp(-0.5 * (across / 0.8) ** 2) * (behind > 0) * np.clip(1 - behind / wake_len, 0, 1)
        )
        wake[win] += 1.2 * streak
    return vv, vh, wake


class _SceneRenderer:
    """Renders any window of a scene from its layout, objects and seed."""

    def __init__(
        self,
        seed: int,
        layout: _SceneLayout,
        objects: _Objects,
        height: int,
        width: int,
        pixel_size: float,
        bands: tuple[str, ...] = ("VV", "VH", "bathymetry"),
    ) -> None:
        self.seed, self.layout, self.objects, self.bands = seed, layout, objects, bands
        self.height, self.width, self.pixel_size = height, width, pixel_size

    def render(
        self, r0: int, c0: int, h: int, w: int, key: tuple[int, int]
    ) -> dict[str, NDArray[np.float32]]:
        """Bands of the window ``rows r0:r0+h, cols c0:c0+w``.

        Args:
            r0: first row.
            c0: first column.
            h: window height.
            w: window width.
            key: window id for its speckle stream (same window, same speckle).

        Returns:
            ``{"VV": (h, w), "VH": (h, w), "bathymetry": (h, w)}`` float32 (dB, dB, metres).
        """
        lay, ps, s = self.layout, self.pixel_size, self.seed
        rows = r0 + np.arange(h) + 0.5  # (h,) scene coordinates of pixel centres
        cols = c0 + np.arange(w) + 0.5
        km = 1000.0 / ps  # pixels per km
        db = np.float32(math.log(10.0) / 10.0)  # power = exp(db * dB)
        coast = sample_layout(lay.land_sdt, lay.factor, rows, cols) + fbm(
            stream_seed(s, 5), rows, cols, [0.6 * km, 0.15 * km], [0.25 * km, 0.06 * km]
        )  # (h, w) signed distance to the coast in pixels, > 0 on land
        land = np.clip(coast / np.float32(1.5) + np.float32(0.5), 0, 1)  # anti-aliased land
        has_land = bool(land.max() > 0)
        wind = fbm(stream_seed(s, 6), rows, cols, [30 * km, 8 * km, 2 * km], [1.4, 0.6, 0.25])
        wind += (lay.wind_tilt * (cols / self.width - 0.5)).astype(np.float32)  # incidence trend
        relief = None
        if has_land:
            relief = fbm(
                stream_seed(s, 7), rows, cols, [5 * km, 1.2 * km, 0.3 * km], [2.5, 1.6, 1.0]
            )
        obj_vv, obj_vh, wake = _stamp_objects(self.objects, r0, c0, h, w, ps)
        out = {}
        for band, sea_db, wind_gain, land_db, targets, stream in (
            ("VV", -20.0, 1.0, -8.0, obj_vv, 0),
            ("VH", -27.0, 0.5, -15.0, obj_vh, 1),
        ):
            mean = np.exp(db * (sea_db + wind_gain * wind)) * (1 + wake)  # (h, w) linear
            if relief is not None:
                mean = (1 - land) * mean + land * np.exp(db * (land_db + relief))
            rng = np.random.default_rng(stream_seed(s, 8, stream, *key))
            speckle = rng.standard_gamma(_LOOKS, (h, w), dtype=np.float32)
            power = mean * speckle * np.float32(1.0 / _LOOKS) + targets
            out[band] = np.float32(10.0) * np.log10(np.maximum(power, np.float32(1e-6)))
        nodata = _nodata_mask(lay, self.height, self.width, rows, cols)
        for band in ("VV", "VH"):
            out[band][nodata] = NODATA
        if "bathymetry" in self.bands:
            # elevation (m): deepens offshore, rises inland
            dist_km = coast / np.float32(km)  # > 0 on land
            sea_depth = -(4.0 + 22.0 * np.abs(np.minimum(dist_km, 0)) ** np.float32(1.1))
            elevation = np.where(dist_km > 0, 2.0 + 12.0 * dist_km, sea_depth)
            bump = fbm(stream_seed(s, 9), rows, cols, [6 * km, 1.5 * km], [0.15, 0.05])
            out["bathymetry"] = (elevation * (1 + bump)).astype(np.float32)
        return out


def _default_origin(seed: int) -> tuple[float, float]:
    """A plausible UTM origin (west, north) in metres."""
    rng = np.random.default_rng([seed, 4])
    return float(round(rng.uniform(300_000, 600_000), -1)), float(
        round(rng.uniform(5_600_000, 6_200_000), -1)
    )


def make_sar_scene(
    out_dir: str | os.PathLike,
    height: int,
    width: int,
    *,
    seed: int = 0,
    n_vessels: int | None = None,
    pixel_size: float = 10.0,
    crs: str = "EPSG:32631",
    nodata_stripes: bool = True,
    extra_bands: tuple[str, ...] = ("bathymetry",),
    tile: int = 1024,
    compress: str | None = "zstd",
    workers: int | None = None,
    progress: bool = False,
) -> SceneInfo:
    """Write one synthetic xView3-style scene folder.

    Args:
        out_dir: the scene folder (created).
        height: rows.
        width: columns.
        seed: seed of everything (layout, objects, speckle).
        n_vessels: number of vessels (default: one per ~40 km2 of sea, at least 8); fishing
            vessels are ~35 % of them, in 1 to 3 clusters. Platforms (``is_vessel`` False) come
            on top: ``max(1, n_vessels // 6)`` within 8 km of the coast.
        pixel_size: metres per pixel.
        crs: CRS of the grid (the origin is a plausible UTM position).
        nodata_stripes: add a nodata corner and 1-2 nodata stripes (value -9999), as real swaths.
        extra_bands: ancillary bands to write; ``"bathymetry"`` is the only one known.
        tile: generation window side (a multiple of 16); GeoTIFF blocks are ``min(tile, 512)``.
        compress: GeoTIFF compression (GDAL name, e.g. "zstd", "deflate", "lzw") or None.
        workers: rendering threads (default: up to 2); windows are written in order.
        progress: show a tqdm bar over windows.

    Returns:
        The scene's :class:`SceneInfo` (``detections`` is also written as ``detections.csv``).

    Raises:
        ValueError: on a non-positive size, a bad tile or an unknown extra band.
    """
    if height <= 0 or width <= 0 or pixel_size <= 0:
        raise ValueError(
            f"height, width and pixel_size must be positive, got {height}, {width}, {pixel_size}"
        )
    if tile <= 0 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16, got {tile}")
    unknown = set(extra_bands) - {"bathymetry"}
    if unknown:
        raise ValueError(f"unknown extra band(s) {sorted(unknown)}; only 'bathymetry' is generated")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layout = _make_layout(seed, height, width, pixel_size, nodata_stripes)
    objects = _place_objects(seed, layout, height, width, pixel_size, n_vessels)
    west, north = _default_origin(seed)
    transform = from_origin(west, north, pixel_size, pixel_size)
    bands = {"VV": "VV_dB.tif", "VH": "VH_dB.tif"}
    if "bathymetry" in extra_bands:
        bands["bathymetry"] = "bathymetry.tif"
    renderer = _SceneRenderer(seed, layout, objects, height, width, pixel_size, tuple(bands))
    block = math.gcd(tile, 512)  # GeoTIFF block side: divides the window side
    profile = dict(
        driver="GTiff",
        height=height,
        width=width,
        count=1,
        dtype="float32",
        crs=crs,
        transform=transform,
        nodata=NODATA,
        tiled=True,
        blockxsize=block,
        blockysize=block,
        BIGTIFF="IF_SAFER",
    )
    if compress:
        profile["compress"] = compress
    windows = [(r, c) for r in range(0, height, tile) for c in range(0, width, tile)]

    def render(window: tuple[int, int]) -> dict[str, NDArray[np.float32]]:
        r0, c0 = window
        h, w = min(tile, height - r0), min(tile, width - c0)
        return renderer.render(r0, c0, h, w, (r0 // tile, c0 // tile))

    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    with rasterio.Env(GDAL_CACHEMAX=128):  # MB: bounds what GDAL keeps of written blocks
        files = {band: rasterio.open(out / name, "w", **profile) for band, name in bands.items()}
        try:
            arrays = ordered_map(render, windows, workers)
            bar = tqdm(windows, disable=not progress, unit="window", desc=out.name, leave=False)
            for (r0, c0), window in zip(bar, arrays, strict=True):
                h, w = window["VV"].shape
                for band, dst in files.items():
                    dst.write(window[band], 1, window=Window(c0, r0, w, h))
        finally:
            for dst in files.values():
                dst.close()
    detections = _detections(objects, layout, transform)
    detections.to_csv(out / "detections.csv", index=False)
    return SceneInfo(
        dir=out,
        height=height,
        width=width,
        crs=crs,
        transform=transform,
        detections=detections,
        pixel_size=pixel_size,
        land_mask=layout.land_mask,
        mask_downsample=layout.factor,
        seed=seed,
        bands=bands,
    )


def _detections(objects: _Objects, layout: _SceneLayout, transform: Affine) -> pd.DataFrame:
    """xView3-style label table of the objects."""
    rows = objects.row.astype(np.float64) + 0.5
    cols = objects.col.astype(np.float64) + 0.5
    shore = np.array(
        [
            float(sample_layout(layout.shore_km, layout.factor, r[None], c[None])[0, 0])
            for r, c in zip(rows, cols, strict=True)
        ]
    )
    xs = transform.a * cols + transform.b * rows + transform.c  # pixel centre -> map
    ys = transform.d * cols + transform.e * rows + transform.f
    vessel = objects.kind != _KIND_PLATFORM
    return pd.DataFrame(
        {
            "detect_scene_row": objects.row,
            "detect_scene_column": objects.col,
            "is_vessel": vessel,
            "is_fishing": objects.kind == _KIND_FISHING,
            "vessel_length_m": np.round(objects.length_m, 1),
            "distance_from_shore_km": np.round(shore, 3),
            "detect_x": np.asarray(xs, np.float64),
            "detect_y": np.asarray(ys, np.float64),
        },
        columns=DETECTION_COLUMNS,
    )


def make_sar_scenes(
    out_dir: str | os.PathLike,
    n: int = 4,
    size: tuple[int, int] = (6000, 5000),
    *,
    seed: int = 0,
    pixel_size: float = 10.0,
    crs: str = "EPSG:32631",
    extra_bands: tuple[str, ...] = ("bathymetry",),
    progress: bool = True,
) -> list[SceneInfo]:
    """Write ``n`` scenes as ``out_dir/scene_XXX/`` folders.

    Args:
        out_dir: output folder (created).
        n: number of scenes.
        size: (width, height) of every scene.
        seed: collection seed; scene ``i`` gets its own seed derived from it.
        pixel_size: metres per pixel.
        crs: CRS of every scene.
        extra_bands: see :func:`make_sar_scene`.
        progress: show tqdm bars.

    Returns:
        One :class:`SceneInfo` per scene.
    """
    width, height = size
    return [
        make_sar_scene(
            Path(out_dir) / f"scene_{i:03d}",
            height,
            width,
            seed=stream_seed(seed, 5, i) % 2**31,
            pixel_size=pixel_size,
            crs=crs,
            extra_bands=extra_bands,
            progress=progress,
        )
        for i in tqdm(range(n), disable=not progress, unit="scene", desc="scenes")
    ]
