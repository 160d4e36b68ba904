"""Writers for model outputs: tiled GeoTIFF and Zarr block by block, PNG heatmaps, GeoJSON.

The block writers share one interface, ``write(y, x, block)`` with ``block`` (C, h, w); parts
of a block that hang over the image edge are dropped, so padded region outputs can be written
as they are.

.. versionadded:: 0.1
"""

from __future__ import annotations

import json
import math
import os
import warnings
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np

from .base import clip_window

__all__ = [
    "GeoTiffWriter",
    "ZarrWriter",
    "boxes_to_geojson",
    "points_to_geojson",
    "save_heatmap_png",
    "write_geotiff",
]

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


class GeoTiffWriter(_BlockWriter):
    """A tiled, compressed GeoTIFF written block by block (BigTIFF when needed).

    The file opens when the writer is created and is complete after :meth:`close` (or the
    ``with`` block). It reads back with rasterio (CRS, transform and nodata intact) and with
    TorchGeo's ``RasterDataset``.

    Args:
        path: output file.
        shape: (C, H, W) or (H, W) of the whole image.
        dtype: pixel type.
        crs: CRS (``"EPSG:32631"``, an EPSG int, a rasterio/pyproj CRS); None for none.
        transform: ``affine.Affine`` pixel -> map transform (or its 6 coefficients a..f);
            None for the identity.
        nodata: nodata value; NaN in float blocks is written as it.
        tile: tile side in pixels (a multiple of 16).
        compress: GDAL compression ("deflate", "lzw", "zstd", None).
        descriptions: one description per band (e.g. output names).
        overviews: build average overviews on close (for viewing large outputs in QGIS).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        path: PathLike,
        shape: Sequence[int],
        dtype: Any,
        crs: Any = None,
        transform: Any = None,
        nodata: float | None = None,
        tile: int = 512,
        compress: str | None = "deflate",
        descriptions: Sequence[str] | None = None,
        overviews: bool = False,
    ) -> None:
        import rasterio
        from affine import Affine
        from rasterio.errors import NotGeoreferencedWarning

        if tile <= 0 or tile % 16:
            raise ValueError(f"tile must be a positive multiple of 16 (GeoTIFF rule), got {tile}")
        self.path = _prepare_parent(path)
        self.shape = _chw(shape)
        self.dtype = np.dtype(dtype)
        self.nodata = None if nodata is None else float(nodata)
        self.overviews = overviews
        c, height, width = self.shape
        if transform is not None and not isinstance(transform, Affine):
            transform = Affine(*list(transform)[:6])
        profile: dict[str, Any] = dict(
            driver="GTiff",
            height=height,
            width=width,
            count=c,
            dtype=self.dtype.name,
            crs=crs,
            transform=transform if transform is not None else Affine.identity(),
            nodata=self.nodata,
            tiled=True,
            blockxsize=tile,
            blockysize=tile,
            BIGTIFF="IF_SAFER",
        )
        if compress:
            profile["compress"] = compress
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            self._ds = rasterio.open(self.path, "w", **profile)
        if descriptions is not None:
            if len(descriptions) != c:
                raise ValueError(f"{self.path}: {len(descriptions)} descriptions for {c} bands")
            for i, text in enumerate(descriptions, start=1):
                self._ds.set_band_description(i, str(text))

    def write(self, y: int, x: int, block: np.ndarray) -> None:
        """Write ``block`` (C, h, w) (or (h, w) for one band) with its top-left at (y, x)."""
        from rasterio.windows import Window

        if self._ds is None or self._ds.closed:
            raise ValueError(f"{self.path}: writer is closed")
        clipped = self._clip_block(y, x, block)
        if clipped is not None:
            y0, x0, data = clipped
            self._ds.write(data, window=Window(x0, y0, data.shape[2], data.shape[1]))

    def close(self) -> None:
        """Build overviews if asked and close the file."""
        ds, self._ds = self._ds, None
        if ds is None or ds.closed:
            return
        try:
            if self.overviews:
                from rasterio.enums import Resampling

                factors, f = [], 2
                while max(self.shape[1:]) / f >= 256:
                    factors.append(f)
                    f *= 2
                if factors:
                    ds.build_overviews(factors, Resampling.average)
                    ds.update_tags(ns="rio_overview", resampling="average")
        finally:
            ds.close()


def write_geotiff(
    path: PathLike,
    array: np.ndarray,
    crs: Any = None,
    transform: Any = None,
    nodata: float | None = None,
    **kwargs: Any,
) -> Path:
    """Write a (C, H, W) or (H, W) array as a tiled GeoTIFF.

    Args:
        path: output file.
        array: pixels.
        crs: CRS, as for :class:`GeoTiffWriter`.
        transform: pixel -> map transform, as for :class:`GeoTiffWriter`.
        nodata: nodata value.
        **kwargs: more :class:`GeoTiffWriter` options (``tile``, ``compress``, ...).

    Returns:
        The path written.

    .. versionadded:: 0.1
    """
    array = np.asarray(array)
    with GeoTiffWriter(path, array.shape, array.dtype, crs, transform, nodata, **kwargs) as out:
        step = 4096
        for y in range(0, out.shape[1], step):
            rows = array[..., y : y + step, :]
            out.write(y, 0, rows)
    return out.path


class ZarrWriter(_BlockWriter):
    """A zarr (v3) array on disk written block by block; reads back with :class:`ZarrSource`.

    Writes of blocks aligned to ``chunk`` never touch the same chunk, so such writes may run
    in parallel.

    Args:
        path: store directory (``*.zarr``); replaced if it exists.
        shape: (C, H, W) or (H, W) of the whole image.
        dtype: pixel type.
        chunk: spatial chunk side.
        fill_value: value of never-written pixels; NaN for floats by default, else 0.
        nodata: value NaN in float blocks is written as (for integer outputs).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        path: PathLike,
        shape: Sequence[int],
        dtype: Any,
        chunk: int = 512,
        fill_value: float | None = None,
        nodata: float | None = None,
    ) -> None:
        import zarr

        self.path = _prepare_parent(path)
        self.shape = _chw(shape)
        self.dtype = np.dtype(dtype)
        self.nodata = None if nodata is None else float(nodata)
        if fill_value is None:
            fill_value = float("nan") if np.issubdtype(self.dtype, np.floating) else 0
        c = self.shape[0]
        self.array = zarr.create_array(
            store=str(self.path),
            shape=self.shape,
            chunks=(c, chunk, chunk),
            dtype=self.dtype,
            fill_value=fill_value,
            overwrite=True,
        )

    def write(self, y: int, x: int, block: np.ndarray) -> None:
        """Write ``block`` (C, h, w) (or (h, w) for one band) with its top-left at (y, x)."""
        clipped = self._clip_block(y, x, block)
        if clipped is not None:
            y0, x0, data = clipped
            self.array[:, y0 : y0 + data.shape[1], x0 : x0 + data.shape[2]] = data


# ---------------------------------------------------------------------------- PNG heatmap
def _resize_prob(prob: np.ndarray, size: tuple[int, int], resample: str) -> np.ndarray:
    """Resize a (h, w) float map with NaN holes to ``size`` (H, W), keeping NaN as NaN."""
    from PIL import Image

    height, width = size
    if prob.shape == (height, width):
        return prob
    if resample == "nearest":
        img = Image.fromarray(prob.astype(np.float32), "F")
        return np.asarray(img.resize((width, height), Image.Resampling.NEAREST))
    if resample != "bilinear":
        raise ValueError(f"resample must be 'nearest' or 'bilinear', got {resample!r}")
    valid = np.isfinite(prob)
    values = Image.fromarray(np.where(valid, prob, 0).astype(np.float32), "F")
    weight = Image.fromarray(valid.astype(np.float32), "F")
    v = np.asarray(values.resize((width, height), Image.Resampling.BILINEAR))
    m = np.asarray(weight.resize((width, height), Image.Resampling.BILINEAR))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = v / m
    out[m < 0.5] = np.nan
    return out


def save_heatmap_png(
    prob: np.ndarray,
    path: PathLike,
    background: np.ndarray | None = None,
    alpha: float = 0.5,
    cmap: Any = "jet",
    resample: str = "nearest",
) -> Path:
    """Save a probability map as a PNG, alone or blended over a thumbnail.

    Args:
        prob: (h, w) floats in [0, 1]; NaN where there is no prediction.
        path: output PNG.
        background: (H, W, 3) uint8 image (e.g. a slide thumbnail) to blend over; the heatmap
            is resized to it. Without it the PNG is RGBA at the heatmap's size.
        alpha: heatmap opacity over the background.
        cmap: matplotlib colormap name or object.
        resample: ``"nearest"`` (blocky, exact cells) or ``"bilinear"`` resizing.

    Returns:
        The path written. NaN cells are transparent (show the background).

    .. versionadded:: 0.1
    """
    import matplotlib
    from PIL import Image

    prob = np.asarray(prob, dtype=np.float32)
    if prob.ndim != 2:
        raise ValueError(f"prob must be (h, w), got shape {prob.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    colormap = matplotlib.colormaps[cmap] if isinstance(cmap, str) else cmap
    lut = colormap(np.linspace(0.0, 1.0, 256), bytes=True)[:, :3]  # (256, 3) uint8
    if background is not None:
        bg = np.asarray(background)
        if bg.ndim == 2:
            bg = np.repeat(bg[..., None], 3, axis=-1)
        if bg.ndim != 3 or bg.shape[-1] not in (3, 4):
            raise ValueError(f"background must be (H, W, 3) uint8, got shape {bg.shape}")
        bg = bg[..., :3].astype(np.uint8, copy=False)
        prob = _resize_prob(prob, bg.shape[:2], resample)
    valid = np.isfinite(prob)  # (H, W)
    index = np.rint(np.clip(np.where(valid, prob, 0), 0, 1) * 255).astype(np.uint8)
    colors = lut[index]  # (H, W, 3)
    if background is None:
        rgba = np.concatenate([colors, (valid * np.uint8(255))[..., None]], axis=-1)
        image = Image.fromarray(rgba.astype(np.uint8), "RGBA")
    else:
        blend = bg * (1.0 - alpha) + colors * alpha  # (H, W, 3) float
        out = np.where(valid[..., None], np.rint(blend), bg).astype(np.uint8)
        image = Image.fromarray(out, "RGB")
    out_path = _prepare_parent(path)
    image.save(out_path, format="PNG")
    return out_path


# ---------------------------------------------------------------------------- GeoJSON
def _jsonable(value: Any) -> Any:
    """Plain JSON types: numpy scalars and arrays unwrapped, NaN / inf -> None."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _crs_member(crs: Any) -> dict[str, Any] | None:
    """The (GDAL/QGIS-read) ``crs`` member of a FeatureCollection, or None."""
    if crs is None:
        return None
    if isinstance(crs, int):
        name = f"urn:ogc:def:crs:EPSG::{crs}"
    elif isinstance(crs, str):
        name = crs
        if crs.upper().startswith("EPSG:"):
            name = f"urn:ogc:def:crs:EPSG::{crs.split(':', 1)[1]}"
    elif hasattr(crs, "to_epsg") and crs.to_epsg() is not None:
        name = f"urn:ogc:def:crs:EPSG::{crs.to_epsg()}"
    else:
        name = crs.to_string()
    return {"type": "name", "properties": {"name": name}}


def _class_color(name: str) -> list[int]:
    """A stable RGB colour for a class name (QuPath shows classes in their colour)."""
    h = zlib.crc32(name.encode())
    return [64 + (h & 0xBF), 64 + ((h >> 8) & 0xBF), 64 + ((h >> 16) & 0xBF)]


def _properties(props: Mapping[str, Any], pixel_space: bool) -> dict[str, Any]:
    """Feature properties; in pixel space also QuPath's objectType / classification."""
    out = _jsonable(dict(props))
    if pixel_space:
        out.setdefault("objectType", "annotation")
        name = props.get("class_name")
        if name is not None:
            out["classification"] = {"name": str(name), "color": _class_color(str(name))}
        numbers = {
            k: v
            for k, v in out.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k != "objectType"
        }
        if numbers:
            out.setdefault("measurements", numbers)
    return out


def _feature_collection(
    geometries: list[dict[str, Any]],
    properties: Sequence[Mapping[str, Any]] | None,
    path: PathLike | None,
    crs: Any,
) -> dict[str, Any]:
    n = len(geometries)
    props = [{}] * n if properties is None else list(properties)
    if len(props) != n:
        raise ValueError(f"got {len(props)} property dicts for {n} geometries")
    pixel_space = crs is None
    collection: dict[str, Any] = {"type": "FeatureCollection"}
    member = _crs_member(crs)
    if member is not None:
        collection["crs"] = member
    collection["features"] = [
        {"type": "Feature", "geometry": g, "properties": _properties(p, pixel_space)}
        for g, p in zip(geometries, props, strict=True)
    ]
    if path is not None:
        out = _prepare_parent(path)
        out.write_text(json.dumps(collection, allow_nan=False))
    return collection


def boxes_to_geojson(
    boxes: Iterable[Sequence[float]],
    properties: Sequence[Mapping[str, Any]] | None = None,
    path: PathLike | None = None,
    crs_name: Any = None,
) -> dict[str, Any]:
    """Boxes as a GeoJSON FeatureCollection of rectangles.

    In pixel space (no ``crs_name``) the features are QuPath annotations: ``objectType``
    ``"annotation"``, a ``classification`` (name, colour) when a ``class_name`` property is
    given, and numeric properties repeated under ``measurements``.

    Args:
        boxes: ``(x0, y0, x1, y1)`` per box (x = column / easting, y = row / northing).
        properties: one dict per box (e.g. ``{"class_name": "vessel", "score": 0.9}``).
        path: file to write (``.geojson``); nothing is written when None.
        crs_name: CRS of map coordinates (``"EPSG:32631"``, an EPSG int, a CRS object);
            None for pixel coordinates.

    Returns:
        The FeatureCollection dict.

    .. versionadded:: 0.1
    """
    geometries = []
    for box in boxes:
        if len(box) != 4:
            raise ValueError(f"a box is (x0, y0, x1, y1), got {tuple(box)}")
        x0, y0, x1, y1 = (float(v) for v in box)
        ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        geometries.append({"type": "Polygon", "coordinates": [ring]})
    return _feature_collection(geometries, properties, path, crs_name)


def points_to_geojson(
    xs: Iterable[float],
    ys: Iterable[float],
    properties: Sequence[Mapping[str, Any]] | None = None,
    path: PathLike | None = None,
    crs: Any = None,
) -> dict[str, Any]:
    """Points as a GeoJSON FeatureCollection (QuPath annotations in pixel space).

    Args:
        xs: x (column, or easting / longitude) per point.
        ys: y (row, or northing / latitude) per point.
        properties: one dict per point.
        path: file to write; nothing is written when None.
        crs: CRS of map coordinates; None for pixel coordinates.

    Returns:
        The FeatureCollection dict.

    .. versionadded:: 0.1
    """
    xs_, ys_ = np.asarray(list(xs), dtype=float), np.asarray(list(ys), dtype=float)
    if xs_.shape != ys_.shape or xs_.ndim != 1:
        raise ValueError(f"xs and ys must be 1-D of one length, got {xs_.shape} and {ys_.shape}")
    geometries = [
        {"type": "Point", "coordinates": [float(x), float(y)]}
        for x, y in zip(xs_, ys_, strict=True)
    ]
    return _feature_collection(geometries, properties, path, crs)
