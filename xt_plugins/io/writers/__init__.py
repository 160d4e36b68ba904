"""Writers for model outputs: COG GeoTIFFs, Zarr and OME-Zarr maps, PNG heatmaps, QuPath GeoJSON.

The block writers share one interface, ``write(y, x, block)`` with ``block`` (C, h, w); parts
of a block that hang over the image edge are dropped, so padded region outputs can be written
as they are.

=========================================  ===============================================
output                                     opens in
=========================================  ===============================================
:class:`GeoTiffWriter` (COG by default)    GDAL, QGIS, rasterio, TorchGeo; ``rio cogeo``
:func:`write_ome_zarr_map` (NGFF 0.5/0.4)  napari (``napari-ome-zarr``), ``ome-zarr``
:class:`ZarrWriter` (plain zarr v3)        zarr, :class:`~xt_plugins.io.ZarrSource`
:func:`write_qupath_geojson` and friends   QuPath 0.4+, QGIS, geopandas
:func:`save_heatmap_png`                   any image viewer
=========================================  ===============================================

.. versionadded:: 0.1
"""

from .geojson import (
    QUPATH_OBJECT_TYPES,
    boxes_to_geojson,
    points_to_geojson,
    regions_to_qupath_geojson,
    write_qupath_geojson,
)
from .geotiff import QUANTIZED_NODATA, QUANTIZED_SCALE, GeoTiffWriter, write_geotiff
from .png import save_heatmap_png
from .zarr_maps import ZarrWriter, ome_zarr_levels, write_ome_zarr_map

__all__ = [
    "QUANTIZED_NODATA",
    "QUANTIZED_SCALE",
    "QUPATH_OBJECT_TYPES",
    "GeoTiffWriter",
    "ZarrWriter",
    "boxes_to_geojson",
    "ome_zarr_levels",
    "points_to_geojson",
    "regions_to_qupath_geojson",
    "save_heatmap_png",
    "write_geotiff",
    "write_ome_zarr_map",
    "write_qupath_geojson",
]
