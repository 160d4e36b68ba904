"""Lazy image sources (slides, rasters, arrays, zarr) and writers (GeoTIFF, Zarr, PNG, GeoJSON).

.. versionadded:: 0.1
"""

from .base import ImageSource
from .errors import ImageReadError, MissingMPPError, SlideOpenError
from .sources import SLIDE_SUFFIXES, ArraySource, RasterSource, SlideSource, ZarrSource, open_image
from .writers import (
    GeoTiffWriter,
    ZarrWriter,
    boxes_to_geojson,
    points_to_geojson,
    save_heatmap_png,
    write_geotiff,
)

__all__ = [
    "SLIDE_SUFFIXES",
    "ArraySource",
    "GeoTiffWriter",
    "ImageReadError",
    "ImageSource",
    "MissingMPPError",
    "RasterSource",
    "SlideOpenError",
    "SlideSource",
    "ZarrSource",
    "ZarrWriter",
    "boxes_to_geojson",
    "open_image",
    "points_to_geojson",
    "save_heatmap_png",
    "write_geotiff",
]
