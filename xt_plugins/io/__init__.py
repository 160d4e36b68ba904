"""Lazy image sources, validity masks, safe checkpoint reading and writers.

Sources: slides, rasters, arrays, zarr and multi-band SAR scenes (:mod:`~xt_plugins.io.scene`);
masks: tissue and nodata (:mod:`~xt_plugins.io.masks`); checkpoints: the one safe reader
(:func:`read_checkpoint`); writers: COG GeoTIFF, Zarr / OME-Zarr, PNG, QuPath GeoJSON.

.. versionadded:: 0.1
"""

from .base import ImageSource
from .checkpoints import Checkpoint, CheckpointError, read_checkpoint
from .errors import ImageReadError, MissingMPPError, SlideOpenError
from .sources import SLIDE_SUFFIXES, ArraySource, RasterSource, SlideSource, ZarrSource, open_image
from .writers import (
    QUANTIZED_NODATA,
    QUANTIZED_SCALE,
    QUPATH_OBJECT_TYPES,
    GeoTiffWriter,
    ZarrWriter,
    boxes_to_geojson,
    ome_zarr_levels,
    points_to_geojson,
    regions_to_qupath_geojson,
    save_heatmap_png,
    write_geotiff,
    write_ome_zarr_map,
    write_qupath_geojson,
)

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "read_checkpoint",
    "QUANTIZED_NODATA",
    "QUANTIZED_SCALE",
    "QUPATH_OBJECT_TYPES",
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
    "ome_zarr_levels",
    "open_image",
    "points_to_geojson",
    "regions_to_qupath_geojson",
    "save_heatmap_png",
    "write_geotiff",
    "write_ome_zarr_map",
    "write_qupath_geojson",
]
