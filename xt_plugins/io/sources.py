"""Lazy image sources and :func:`open_image`, which picks the right one for an object or path.

Every source reads windows ``(y, x, h, w)`` of a (C, H, W) image without loading the whole
image: ``read`` pads outside the image with 0, ``read_mask`` marks real data. See
:class:`~xt_plugins.io.base.ImageSource`.

.. versionadded:: 0.1
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .arrays import ArraySource, ZarrSource
from .base import ImageSource, nodata_mask
from .errors import ImageReadError, MissingMPPError, SlideOpenError
from .raster import RasterSource
from .slide import SlideSource

__all__ = [
    "ArraySource",
    "ImageReadError",
    "ImageSource",
    "MissingMPPError",
    "RasterSource",
    "SlideOpenError",
    "SlideSource",
    "ZarrSource",
    "open_image",
    "nodata_mask",
    "SLIDE_SUFFIXES",
]

#: Suffixes that are always whole-slide images (OpenSlide 4 formats; ``.tif``/``.tiff`` are
#: decided per file by :func:`open_image`).
SLIDE_SUFFIXES = frozenset(
    {".svs", ".ndpi", ".mrxs", ".scn", ".dcm", ".vms", ".vmu", ".bif", ".svslide", ".czi"}
)
_TIFF_SUFFIXES = frozenset({".tif", ".tiff"})
_SLIDE_KWARGS = frozenset({"level", "mpp", "slide_mpp", "mpp_tolerance"})
_RASTER_KWARGS = frozenset({"bands"})

Kind = Literal["array", "zarr", "raster", "slide"]


def _is_zarr_array(obj: Any) -> bool:
    zarr = sys.modules.get("zarr")  # a zarr array implies zarr is imported
    return zarr is not None and isinstance(obj, zarr.Array)


def _is_georeferenced(path: str) -> bool | None:
    """True if rasterio opens ``path`` with a CRS or a geotransform; None if it cannot open it."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                return ds.crs is not None or not ds.transform.is_identity or bool(ds.gcps[0])
    except RasterioError:
        return None


def _tiff_kind(path: str, kw: dict[str, Any]) -> Kind:
    """Decide whether a ``.tif``/``.tiff`` is a whole-slide image or a raster."""
    import openslide

    vendor = openslide.OpenSlide.detect_format(path)
    if vendor is not None and vendor != "generic-tiff":
        return "slide"  # Aperio / Philips / Ventana / Trestle TIFF
    if _SLIDE_KWARGS & kw.keys():
        return "slide"
    if _RASTER_KWARGS & kw.keys():
        return "raster"
    georeferenced = _is_georeferenced(path)
    if georeferenced:
        return "raster"  # a GeoTIFF, even a tiled one with overviews
    if georeferenced is None and vendor is not None:
        return "slide"  # rasterio cannot open it; let OpenSlide say why it cannot either
    if vendor == "generic-tiff":
        try:
            with openslide.OpenSlide(path) as slide:
                if slide.level_count > 1:
                    return "slide"  # a pyramidal TIFF without georeferencing
        except openslide.OpenSlideError:
            pass
    return "raster"


def _path_kind(path: Path, kw: dict[str, Any]) -> Kind:
    suffix = path.suffix.lower()
    if suffix == ".zarr" or (path.is_dir() and (path / "zarr.json").exists()):
        return "zarr"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if suffix in SLIDE_SUFFIXES:
        return "slide"
    if suffix in _TIFF_SUFFIXES:
        return _tiff_kind(str(path), kw)
    return "raster"  # any other format GDAL reads (.img, .jp2, .vrt, .nc, .png, ...)


def open_image(obj: Any, kind: Kind | None = None, **kwargs: Any) -> ImageSource:
    """Open anything image-like as a lazy :class:`ImageSource`.

    Dispatch:

    - an :class:`ImageSource` is returned unchanged;
    - numpy array / ``np.memmap`` -> :class:`ArraySource`;
    - zarr array, or a ``*.zarr`` path -> :class:`ZarrSource`;
    - ``.svs .ndpi .mrxs .scn .dcm .vms .vmu .bif .svslide .czi`` -> :class:`SlideSource`;
    - ``.tif``/``.tiff``: a slide when OpenSlide detects a vendor format other than
      ``generic-tiff``, or slide options (``level``, ``mpp``, ``slide_mpp``) are given; a
      raster when rasterio finds a CRS or geotransform (GeoTIFFs with overviews included);
      otherwise a slide when it is a multi-level tiled pyramid, else a raster;
    - any other path -> :class:`RasterSource` (whatever GDAL reads).

    Args:
        obj: array, zarr array, path, or source.
        kind: force ``"array"``, ``"zarr"``, ``"raster"`` or ``"slide"``.
        **kwargs: passed to the source's constructor (``bands``, ``nodata``, ``level``,
            ``mpp``, ``slide_mpp``, ``mpp_tolerance``, ``name``).

    Returns:
        The source.

    Raises:
        TypeError: for an unsupported object type.
        FileNotFoundError: for a path that does not exist.
        ValueError: for an unknown ``kind``, or options given with an already open source.

    .. versionadded:: 0.1
    """
    if isinstance(obj, ImageSource):
        if kwargs or kind is not None:
            raise ValueError(
                f"{obj!r} is already open; options {sorted(kwargs)} cannot be applied to it"
            )
        return obj
    if kind is not None and kind not in ("array", "zarr", "raster", "slide"):
        raise ValueError(f"kind must be 'array', 'zarr', 'raster' or 'slide', got {kind!r}")
    if isinstance(obj, np.ndarray):
        return ArraySource(obj, **kwargs)
    if _is_zarr_array(obj):
        return ZarrSource(obj, **kwargs)
    if isinstance(obj, str | os.PathLike):
        path = Path(obj).expanduser()
        kind = kind or _path_kind(path, kwargs)
        if kind == "slide":
            return SlideSource(path, **kwargs)
        if kind == "zarr":
            return ZarrSource(path, **kwargs)
        if kind == "raster":
            return RasterSource(path, **kwargs)
        raise ValueError(f"{path}: kind={kind!r} needs an in-memory array, not a path")
    raise TypeError(
        f"cannot open a {type(obj).__module__}.{type(obj).__qualname__} as an image; supported: "
        "numpy arrays and memmaps (C, H, W) or (H, W), zarr arrays, paths to .zarr stores, "
        "GeoTIFFs and other GDAL rasters, whole-slide images "
        "(.svs .ndpi .mrxs .scn .dcm .vms .vmu .bif .svslide .czi, pyramidal .tif/.tiff), "
        "or an ImageSource"
    )
