"""GeoJSON FeatureCollections for QGIS/GDAL and QuPath: boxes, points, region tiles, any geometry.

QuPath (0.4 and later) reads a FeatureCollection whose features carry, in ``properties``:
``objectType`` (``annotation``, ``detection``, ``tile``, ``cell``, ...), optionally
``classification`` ``{"name": str, "color": [r, g, b]}``, ``measurements`` as an object of
numbers (the list form ``[{"name", "value"}]`` of QuPath 0.3 broke other tools' imports),
``name``, ``color`` and ``isLocked``; and a UUID ``id`` on the feature (this is what QuPath's
``PathObjectTypeAdapters`` writes and reads). Coordinates are level-0 pixels with (0, 0) at the
top-left corner of the full-resolution image. :func:`write_qupath_geojson` writes such files
(``tests/io/qupath_geojson.schema.json`` is the JSON Schema the tests hold them to); for scenes
the same objects carry map coordinates and the FeatureCollection's ``crs`` member, which GDAL,
QGIS and geopandas read. Pixel-space files have no ``crs`` member, so GDAL (and geopandas) take
them as WGS 84 lon/lat, the RFC 7946 default: set ``gdf.crs = None`` after
``geopandas.read_file`` when working in pixels. A path ending in ``.gz`` is written
gzip-compressed; GDAL and geopandas read it as ``/vsigzip/<path>``.

.. versionadded:: 0.1
.. versionchanged:: 0.2
   :func:`write_qupath_geojson`, :func:`regions_to_qupath_geojson`, ``object_type=`` for
   :func:`boxes_to_geojson` / :func:`points_to_geojson`, ``.geojson.gz``.
"""

from __future__ import annotations

import gzip
import json
import math
import uuid
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._common import PathLike, _prepare_parent

__all__ = [
    "QUPATH_OBJECT_TYPES",
    "boxes_to_geojson",
    "points_to_geojson",
    "regions_to_qupath_geojson",
    "write_qupath_geojson",
]

#: ``objectType`` values QuPath creates objects from (anything else becomes an annotation).
QUPATH_OBJECT_TYPES = ("annotation", "detection", "tile", "cell", "tmaCore")
_QUPATH_KEYS = ("objectType", "classification", "measurements", "isLocked")


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


# ---------------------------------------------------------------------------- QuPath objects
def _rgb(color: Sequence[int], name: str) -> list[int]:
    rgb = [int(v) for v in color]
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise ValueError(f"colour of class {name!r} must be [r, g, b] in 0..255, got {color!r}")
    return rgb


def _measurements(values: Mapping[str, Any] | None) -> dict[str, float | int]:
    """QuPath measurements: an object of finite numbers (NaN / None dropped: 'not measured')."""
    out: dict[str, float | int] = {}
    for key, value in (values or {}).items():
        if value is None:
            continue
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, int | float):
            raise ValueError(
                f"measurement {key!r} is {type(value).__name__}, QuPath needs numbers: "
                "pass text as properties instead"
            )
        if isinstance(value, float) and not math.isfinite(value):
            continue
        out[str(key)] = value
    return out


def _geometry(item: Any) -> dict[str, Any]:
    """A GeoJSON geometry from a geometry dict, a shapely-like object, a box or a point."""
    if isinstance(item, Mapping):
        if "type" not in item:
            raise ValueError(f"a geometry dict needs 'type' and 'coordinates', got {dict(item)}")
        return _jsonable(dict(item))
    if hasattr(item, "__geo_interface__"):
        return _jsonable(dict(item.__geo_interface__))
    values = [float(v) for v in item]
    if len(values) == 4:
        x0, y0, x1, y1 = values
        ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        return {"type": "Polygon", "coordinates": [ring]}
    if len(values) == 2:
        return {"type": "Point", "coordinates": values}
    raise ValueError(
        "a geometry is a GeoJSON dict, a shapely geometry, a box (x0, y0, x1, y1) or a point "
        f"(x, y); got {tuple(values)}"
    )


def _per_feature(value: Any, n: int, what: str) -> list[Any]:
    """``value`` repeated for ``n`` features (one str / None) or checked to have ``n`` items."""
    if value is None or isinstance(value, str):
        return [value] * n
    items = list(value)
    if len(items) != n:
        raise ValueError(f"got {len(items)} {what} for {n} geometries")
    return items


def _qupath_properties(
    extra: Mapping[str, Any],
    object_type: str,
    class_name: str | None,
    measurements: Mapping[str, Any] | None,
    colors: Mapping[str, Sequence[int]],
    locked: bool,
) -> dict[str, Any]:
    clash = [k for k in _QUPATH_KEYS if k in extra]
    if clash:
        raise ValueError(
            f"properties may not set {clash}: pass object_type=, classes=, measurements= instead"
        )
    out = _jsonable(dict(extra))
    out["objectType"] = object_type
    if class_name is not None:
        name = str(class_name)
        color = colors.get(name)
        out["classification"] = {
            "name": name,
            "color": _class_color(name) if color is None else _rgb(color, name),
        }
    if locked:
        out["isLocked"] = True
    numbers = _measurements(measurements)
    if numbers:
        out["measurements"] = numbers
    return out


def _write_collection(collection: dict[str, Any], path: PathLike) -> Path:
    """Write the collection as JSON; gzip-compressed when the name ends in ``.gz``."""
    out = _prepare_parent(path)
    text = json.dumps(collection, allow_nan=False)
    if out.suffix.lower() == ".gz":
        with open(out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            gz.write(text.encode())
    else:
        out.write_text(text)
    return out


def _collection(
    features: list[dict[str, Any]], crs: Any, metadata: Mapping[str, Any] | None
) -> dict[str, Any]:
    collection: dict[str, Any] = {"type": "FeatureCollection"}
    member = _crs_member(crs)
    if member is not None:
        collection["crs"] = member
    if metadata:
        collection["metadata"] = _jsonable(dict(metadata))
    collection["features"] = features
    return collection


def write_qupath_geojson(
    path: PathLike | None,
    geometries: Iterable[Any],
    object_type: str = "detection",
    classes: str | Sequence[str | None] | None = None,
    measurements: Sequence[Mapping[str, Any] | None] | None = None,
    properties: Sequence[Mapping[str, Any]] | None = None,
    crs: Any = None,
    *,
    colors: Mapping[str, Sequence[int]] | None = None,
    locked: bool = False,
    ids: bool = True,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Objects as a QuPath-conformant GeoJSON FeatureCollection (``.geojson`` or ``.geojson.gz``).

    Each feature gets ``properties.objectType``, a ``classification`` ``{name, color}`` when
    it has a class, ``measurements`` as an object of numbers, and a random UUID ``id`` (as
    QuPath 0.4+ writes). Coordinates are taken as given: level-0 pixels for slides (QuPath's
    convention), map coordinates for scenes together with ``crs``.

    Args:
        path: file to write; ``*.gz`` is gzip-compressed; nothing is written when None.
        geometries: per object a GeoJSON geometry dict, a shapely geometry, a box
            ``(x0, y0, x1, y1)`` or a point ``(x, y)``.
        object_type: QuPath object type: ``"detection"``, ``"tile"``, ``"annotation"``,
            ``"cell"`` or ``"tmaCore"``.
        classes: one class name for all, or one per object (None: unclassified).
        measurements: one mapping of numbers per object (class probabilities, region index,
            ...); NaN and None are left out, booleans become 0 / 1.
        properties: one mapping per object of extra properties (text, flags) kept beside the
            QuPath keys; they may not set those keys.
        crs: CRS of map coordinates (``"EPSG:32631"``, an EPSG int, a CRS object), written as
            the collection's ``crs`` member; None for pixel coordinates.
        colors: RGB per class name; other classes get a stable colour from their name.
        locked: mark objects ``isLocked`` (QuPath then protects them from editing).
        ids: give each feature a UUID ``id``.
        metadata: written as the collection's ``metadata`` member (e.g. the coordinate
            convention); GeoJSON readers ignore it.

    Returns:
        The FeatureCollection dict.

    .. versionadded:: 0.2
    """
    if object_type not in QUPATH_OBJECT_TYPES:
        raise ValueError(f"object_type must be one of {QUPATH_OBJECT_TYPES}, got {object_type!r}")
    geoms = [_geometry(g) for g in geometries]
    n = len(geoms)
    names = _per_feature(classes, n, "classes")
    measures = _per_feature(measurements, n, "measurement dicts")
    extras = _per_feature(properties, n, "property dicts")
    color_map = dict(colors or {})
    features = []
    for geom, name, measure, extra in zip(geoms, names, measures, extras, strict=True):
        feature: dict[str, Any] = {"type": "Feature"}
        if ids:
            feature["id"] = str(uuid.uuid4())
        feature["geometry"] = geom
        feature["properties"] = _qupath_properties(
            extra or {}, object_type, name, measure, color_map, locked
        )
        features.append(feature)
    collection = _collection(features, crs, metadata)
    if path is not None:
        _write_collection(collection, path)
    return collection


def regions_to_qupath_geojson(
    path: PathLike | None,
    probs: np.ndarray,
    region_size: float | Sequence[float],
    class_names: Sequence[str],
    *,
    image_size: Sequence[int] | None = None,
    transform: Any = None,
    crs: Any = None,
    object_type: str = "tile",
    valid: np.ndarray | None = None,
    extra: Mapping[str, np.ndarray] | None = None,
    threshold: float = 0.5,
    decimals: int | None = 4,
) -> dict[str, Any]:
    """A (C, rows, cols) region probability map as QuPath tiles, one square per region.

    Region (r, c) becomes the box ``[c * sx, r * sy, (c + 1) * sx, (r + 1) * sy]`` in level-0
    pixels (clipped to ``image_size``), mapped through ``transform`` to map coordinates when
    one is given (scenes). Its ``classification`` is the most probable class (with one channel:
    ``class_names[0]`` when ``p >= threshold``, else unclassified) and its ``measurements`` are
    ``prob_<class>`` per class plus ``row`` and ``col`` (and each ``extra`` map's value).

    Args:
        path: file to write (``.geojson`` / ``.geojson.gz``); nothing is written when None.
        probs: (C, rows, cols) or (rows, cols) probabilities, NaN where not predicted.
        region_size: level-0 pixels per region, one number or (y, x) (a float when the map
            was computed at a lower pyramid level: region * downsample).
        class_names: one name per channel.
        image_size: (H, W) of level 0, to clip the last row / column of regions.
        transform: ``affine.Affine`` pixel -> map transform (scenes); None keeps pixels.
        crs: CRS of the map coordinates (with ``transform``).
        object_type: QuPath object type of the regions (``"tile"`` by default).
        valid: (rows, cols) bool, regions to write; default: finite in every channel.
        extra: more (rows, cols) maps written as measurements under their key (e.g.
            ``{"tissue": fractions}``).
        threshold: decision threshold of a single-channel map.
        decimals: round measurements to this many decimals (None: full precision).

    Returns:
        The FeatureCollection dict.

    .. versionadded:: 0.2
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 2:
        p = p[None]
    if p.ndim != 3:
        raise ValueError(f"probs must be (C, rows, cols) or (rows, cols), got shape {p.shape}")
    c, rows, cols = p.shape
    if len(class_names) != c:
        raise ValueError(f"{len(class_names)} class_names for {c} channels")
    if isinstance(region_size, int | float | np.integer | np.floating):
        sy = sx = float(region_size)
    else:
        sy, sx = (float(v) for v in region_size)
    h0, w0 = (math.inf, math.inf) if image_size is None else (float(v) for v in image_size[-2:])
    keep = np.isfinite(p).all(axis=0) if valid is None else np.asarray(valid, dtype=bool)
    if keep.shape != (rows, cols):
        raise ValueError(f"valid must be ({rows}, {cols}), got {keep.shape}")
    maps = {k: np.asarray(v) for k, v in (extra or {}).items()}
    for key, value in maps.items():
        if value.shape != (rows, cols):
            raise ValueError(f"extra[{key!r}] must be ({rows}, {cols}), got {value.shape}")

    def rounded(v: float) -> float:
        return float(v) if decimals is None else round(float(v), decimals)

    geometries, classes, measures = [], [], []
    for r, col in zip(*np.nonzero(keep), strict=True):
        x0, y0 = col * sx, r * sy
        x1, y1 = min((col + 1) * sx, w0), min((r + 1) * sy, h0)
        corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
        if transform is not None:
            corners = [tuple(transform @ (x, y)) for x, y in corners]
        ring = [[float(x), float(y)] for x, y in corners]
        geometries.append({"type": "Polygon", "coordinates": [ring]})
        cell = p[:, r, col]
        if c == 1:
            classes.append(class_names[0] if cell[0] >= threshold else None)
        else:
            best = int(np.nanargmax(cell)) if np.isfinite(cell).any() else None
            classes.append(None if best is None else class_names[best])
        measure: dict[str, Any] = {
            f"prob_{n}": rounded(v) for n, v in zip(class_names, cell, strict=True)
        }
        measure.update(row=int(r), col=int(col))
        measure.update({k: rounded(v[r, col]) for k, v in maps.items()})
        measures.append(measure)
    return write_qupath_geojson(path, geometries, object_type, classes, measures, crs=crs)


# ---------------------------------------------------------------------------- boxes and points
def _feature_collection(
    geometries: list[dict[str, Any]],
    properties: Sequence[Mapping[str, Any]] | None,
    path: PathLike | None,
    crs: Any,
    object_type: str | None,
    metadata: Mapping[str, Any] | None,
) -> dict[str, Any]:
    n = len(geometries)
    props = [{}] * n if properties is None else list(properties)
    if len(props) != n:
        raise ValueError(f"got {len(props)} property dicts for {n} geometries")
    if object_type is not None:
        return _qupath_collection(geometries, props, path, crs, object_type, metadata)
    pixel_space = crs is None
    features = [
        {"type": "Feature", "geometry": g, "properties": _properties(p, pixel_space)}
        for g, p in zip(geometries, props, strict=True)
    ]
    collection = _collection(features, crs, metadata)
    if path is not None:
        _write_collection(collection, path)
    return collection


def _qupath_collection(
    geometries: list[dict[str, Any]],
    props: list[Mapping[str, Any]],
    path: PathLike | None,
    crs: Any,
    object_type: str,
    metadata: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Boxes / points with flat properties as QuPath objects.

    ``class_name`` -> classification, numeric properties -> measurements; all are also kept as
    they are (flat columns for QGIS / geopandas).
    """
    classes, measures, extras = [], [], []
    for prop in props:
        extra = {k: v for k, v in prop.items() if k not in _QUPATH_KEYS}
        name = prop.get("class_name")
        classes.append(None if name is None else str(name))
        measures.append(
            {
                k: v
                for k, v in extra.items()
                if isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
            }
        )
        extras.append(extra)
    return write_qupath_geojson(
        path, geometries, object_type, classes, measures, extras, crs, metadata=metadata
    )


def boxes_to_geojson(
    boxes: Iterable[Sequence[float]],
    properties: Sequence[Mapping[str, Any]] | None = None,
    path: PathLike | None = None,
    crs_name: Any = None,
    *,
    object_type: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Boxes as a GeoJSON FeatureCollection of rectangles.

    In pixel space (no ``crs_name``) the features are QuPath annotations: ``objectType``
    ``"annotation"``, a ``classification`` (name, colour) when a ``class_name`` property is
    given, and numeric properties repeated under ``measurements``. With ``object_type`` the
    features are QuPath objects of that type in pixel and map space alike, as written by
    :func:`write_qupath_geojson` (``class_name`` -> classification, numbers -> measurements,
    NaN left out of them; all properties also kept as they are).

    Args:
        boxes: ``(x0, y0, x1, y1)`` per box (x = column / easting, y = row / northing).
        properties: one dict per box (e.g. ``{"class_name": "vessel", "score": 0.9}``).
        path: file to write (``.geojson``, or ``.geojson.gz`` compressed); nothing is written
            when None.
        crs_name: CRS of map coordinates (``"EPSG:32631"``, an EPSG int, a CRS object);
            None for pixel coordinates.
        object_type: QuPath object type (``"tile"``, ``"detection"``, ``"annotation"``); None
            for the behaviour above.
        metadata: written as the collection's ``metadata`` member (e.g. the coordinate
            convention); GeoJSON readers ignore it.

    Returns:
        The FeatureCollection dict.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
       ``object_type``, ``metadata``; ``.gz`` paths.
    """
    geometries = []
    for box in boxes:
        if len(box) != 4:
            raise ValueError(f"a box is (x0, y0, x1, y1), got {tuple(box)}")
        geometries.append(_geometry(box))
    return _feature_collection(geometries, properties, path, crs_name, object_type, metadata)


def points_to_geojson(
    xs: Iterable[float],
    ys: Iterable[float],
    properties: Sequence[Mapping[str, Any]] | None = None,
    path: PathLike | None = None,
    crs: Any = None,
    *,
    object_type: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Points as a GeoJSON FeatureCollection (QuPath annotations in pixel space).

    Args:
        xs: x (column, or easting / longitude) per point.
        ys: y (row, or northing / latitude) per point.
        properties: one dict per point.
        path: file to write (``.gz`` compressed); nothing is written when None.
        crs: CRS of map coordinates; None for pixel coordinates.
        object_type: QuPath object type (e.g. ``"detection"``), as for
            :func:`boxes_to_geojson`; None for plain properties in map space and annotations
            in pixel space.
        metadata: written as the collection's ``metadata`` member (e.g. ``{"points": "pixel
            centres"}``); GeoJSON readers ignore it.

    Returns:
        The FeatureCollection dict.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
       ``object_type``, ``metadata``; ``.gz`` paths.
    """
    xs_, ys_ = np.asarray(list(xs), dtype=float), np.asarray(list(ys), dtype=float)
    if xs_.shape != ys_.shape or xs_.ndim != 1:
        raise ValueError(f"xs and ys must be 1-D of one length, got {xs_.shape} and {ys_.shape}")
    geometries = [
        {"type": "Point", "coordinates": [float(x), float(y)]}
        for x, y in zip(xs_, ys_, strict=True)
    ]
    return _feature_collection(geometries, properties, path, crs, object_type, metadata)
