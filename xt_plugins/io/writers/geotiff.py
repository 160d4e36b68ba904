"""GeoTIFF outputs written block by block: Cloud-Optimized (COG) by default, plain tiled on request.

A COG needs its overviews and its tiles in a fixed order in the file, so it cannot be written in
place block by block. :class:`GeoTiffWriter` therefore writes the blocks into a tiled, lightly
compressed GeoTIFF next to the output (``.<name>.partial.tif``) and, on
:meth:`~GeoTiffWriter.close`, lets GDAL's COG driver copy it into the final file. GDAL builds
the overviews from the source block by block through its block cache, which is capped
(``cache_mb``) for the copy, so memory stays bounded however large the raster is.

.. versionadded:: 0.1
.. versionchanged:: 0.2
   COG output (``cog=True``, the default), ``quantize`` for uint8 probabilities.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from ._common import PathLike, _BlockWriter, _chw, _prepare_parent

__all__ = [
    "QUANTIZED_NODATA",
    "QUANTIZED_SCALE",
    "GeoTiffWriter",
    "write_geotiff",
]

#: Stored value of "no probability" (NaN) in a quantized uint8 file.
QUANTIZED_NODATA = 255
#: GDAL scale of a quantized file: probability = stored * QUANTIZED_SCALE (0 -> 0.0, 254 -> 1.0).
QUANTIZED_SCALE = 1.0 / 254.0

_PREDICTOR_CODECS = {"deflate", "zstd", "lzw", "lzma"}


def _codec(compress: str | None) -> str | None:
    if compress is None or str(compress).lower() in ("", "none"):
        return None
    return str(compress).lower()


def _partial_options(codec: str | None, dtype: np.dtype) -> dict[str, Any]:
    """Creation options of the intermediate tiled file: fast settings of the final codec."""
    if codec is None:
        return {}
    opts: dict[str, Any] = {"compress": codec}
    if codec in _PREDICTOR_CODECS:
        opts["predictor"] = 3 if np.issubdtype(dtype, np.floating) else 2
    if codec == "deflate":
        opts["zlevel"] = 1
    elif codec == "zstd":
        opts["zstd_level"] = 1
    return opts


class GeoTiffWriter(_BlockWriter):
    """A GeoTIFF written block by block: a Cloud-Optimized GeoTIFF (COG) by default.

    With ``cog=True`` the finished file is a COG that ``rio cogeo validate`` accepts: tiles of
    ``tile`` pixels (512 by default), ``compress`` with a predictor (2, horizontal differencing,
    for integers; 3, floating point, for floats), internal overviews halving until the smallest
    fits in one tile (GDAL's ``OVERVIEWS=AUTO``; none for a raster of one tile), resampled with
    ``resampling`` and ignoring nodata pixels, and BigTIFF when the file could pass 4 GB. The
    file appears at ``path`` only on :meth:`close` (or at the end of the ``with`` block); until
    then the blocks go to ``.<name>.partial.tif`` beside it, which is removed afterwards. When
    the ``with`` block raises, :meth:`abort` removes it and no file appears at ``path``.
    With ``cog=False`` the blocks are written straight into a tiled GeoTIFF at ``path``.

    Either way it reads back with rasterio (CRS, transform, nodata and band descriptions intact),
    GDAL/QGIS and TorchGeo's ``RasterDataset``.

    ``quantize=True`` stores probabilities in [0, 1] as uint8, 4x smaller than float32:
    stored = round(p * 254), so 0 -> 0.0 and 254 -> 1.0 exactly and any p is kept within 1/508;
    NaN is stored as 255, the file's nodata. The band's GDAL scale is 1/254 and its offset 0
    (``rasterio``'s ``ds.scales`` / ``ds.offsets``; QGIS and ``gdal_translate -unscale`` apply
    them), so readers that apply scale/offset get probabilities back. Blocks are then floats
    (``dtype`` is their float type); values outside [0, 1] are clipped.

    Args:
        path: output file.
        shape: (C, H, W) or (H, W) of the whole image.
        dtype: pixel type (with ``quantize``, the float type of the blocks written).
        crs: CRS (``"EPSG:32631"``, an EPSG int, a rasterio/pyproj CRS); None for none.
        transform: ``affine.Affine`` pixel -> map transform (or its 6 coefficients a..f);
            None for the identity.
        nodata: nodata value; NaN in float blocks is written as it. Pass NaN for float
            probability maps so that viewers and overviews skip missing cells.
        tile: tile side in pixels (a multiple of 16).
        compress: GDAL compression ("deflate", "zstd", "lzw", None).
        descriptions: one description per band (e.g. output names).
        overviews: build internal overviews. None (default): yes for a COG, no otherwise;
            False with ``cog=True`` gives a COG without overviews.
        cog: write a Cloud-Optimized GeoTIFF (see above); False for a plain tiled GeoTIFF.
        quantize: store [0, 1] probabilities as uint8 with scale/offset (see above).
        resampling: overview resampling ("average" for probabilities; "nearest" or "mode"
            for class labels).
        cache_mb: cap on GDAL's block cache (MiB) during each write and while the COG is
            built, which bounds the memory of both (the previous size is restored after).

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
       ``cog``, ``quantize``, ``resampling`` and ``cache_mb``; ``overviews`` defaults to None.
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
        overviews: bool | None = None,
        *,
        cog: bool = True,
        quantize: bool = False,
        resampling: str = "average",
        cache_mb: int = 256,
    ) -> None:
        import rasterio
        from affine import Affine
        from rasterio.errors import NotGeoreferencedWarning

        if tile <= 0 or tile % 16:
            raise ValueError(f"tile must be a positive multiple of 16 (GeoTIFF rule), got {tile}")
        self.path = _prepare_parent(path)
        self.shape = _chw(shape)
        self.dtype = np.dtype(dtype)
        self.cog = bool(cog)
        self.quantize = bool(quantize)
        self.tile = int(tile)
        self.codec = _codec(compress)
        self.resampling = str(resampling).lower()
        self.cache_mb = int(cache_mb)
        self.overviews = overviews
        if self.quantize:
            if not np.issubdtype(self.dtype, np.floating):
                raise ValueError(
                    f"{self.path}: quantize=True stores float probabilities as uint8; pass the "
                    f"blocks' float dtype (e.g. float32), got {self.dtype}"
                )
            if nodata is not None and nodata != QUANTIZED_NODATA:
                raise ValueError(
                    f"{self.path}: quantized files use nodata {QUANTIZED_NODATA}; "
                    f"drop nodata={nodata}"
                )
            nodata = QUANTIZED_NODATA
        self.nodata = None if nodata is None else float(nodata)
        file_dtype = np.dtype(np.uint8) if self.quantize else self.dtype
        c, height, width = self.shape
        if descriptions is not None and len(descriptions) != c:
            raise ValueError(f"{self.path}: {len(descriptions)} descriptions for {c} bands")
        if transform is not None and not isinstance(transform, Affine):
            transform = Affine(*list(transform)[:6])
        self._target = self.path
        if self.cog:
            self._target = self.path.with_name(f".{self.path.name}.partial.tif")
        profile: dict[str, Any] = dict(
            driver="GTiff",
            height=height,
            width=width,
            count=c,
            dtype=file_dtype.name,
            crs=crs,
            transform=transform if transform is not None else Affine.identity(),
            nodata=self.nodata,
            tiled=True,
            blockxsize=tile,
            blockysize=tile,
            BIGTIFF="IF_SAFER",
        )
        if self.cog:
            profile.update(_partial_options(self.codec, file_dtype))
        elif self.codec:
            profile["compress"] = self.codec
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            self._ds = rasterio.open(self._target, "w", **profile)
        for i, text in enumerate(descriptions or (), start=1):
            self._ds.set_band_description(i, str(text))
        if self.quantize:
            self._ds.scales = (QUANTIZED_SCALE,) * c
            self._ds.offsets = (0.0,) * c

    def _clip_block(self, y: int, x: int, block: np.ndarray) -> tuple[int, int, np.ndarray] | None:
        if not self.quantize:
            return super()._clip_block(y, x, block)
        nodata, self.nodata = self.nodata, None  # NaN is mapped by _quantized, not replaced
        try:
            clipped = super()._clip_block(y, x, block)
        finally:
            self.nodata = nodata
        if clipped is None:
            return None
        y0, x0, data = clipped
        return y0, x0, _quantized(data)

    def write(self, y: int, x: int, block: np.ndarray) -> None:
        """Write ``block`` (C, h, w) (or (h, w) for one band) with its top-left at (y, x)."""
        from rasterio.windows import Window

        if self._ds is None or self._ds.closed:
            raise ValueError(f"{self.path}: writer is closed")
        clipped = self._clip_block(y, x, block)
        if clipped is not None:
            y0, x0, data = clipped
            # Windows that cut tiles leave dirty tiles in GDAL's cache (by default 5% of the
            # RAM): capping it per write flushes them down to cache_mb (measured: +317 MB RSS
            # for a 256 MB raster written in 1000-px windows without the cap).
            with _gdal_cache_capped(self.cache_mb):
                self._ds.write(data, window=Window(x0, y0, data.shape[2], data.shape[1]))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:  # a failed run leaves no COG that looks finished
            self.abort()

    def abort(self) -> None:
        """Stop without finishing the file.

        A COG's partial file is removed and nothing is left at ``path``; a plain
        (``cog=False``) file is closed as written so far.
        """
        ds, self._ds = self._ds, None
        if ds is not None and not ds.closed:
            ds.close()
        if self.cog:
            self._target.unlink(missing_ok=True)

    def close(self) -> None:
        """Finish the file: build the COG (or the plain file's overviews, if asked) and close."""
        ds, self._ds = self._ds, None
        if ds is None or ds.closed:
            return
        if not self.cog:
            try:
                if self.overviews:
                    self._plain_overviews(ds)
            finally:
                ds.close()
            return
        ds.close()
        try:
            self._copy_cog()
        finally:
            self._target.unlink(missing_ok=True)

    def _plain_overviews(self, ds: Any) -> None:
        from rasterio.enums import Resampling

        factors, f = [], 2
        while max(self.shape[1:]) / f >= 256:
            factors.append(f)
            f *= 2
        if factors:
            ds.build_overviews(factors, Resampling[self.resampling])
            ds.update_tags(ns="rio_overview", resampling=self.resampling)

    def _copy_cog(self) -> None:
        import rasterio
        import rasterio.shutil
        from rasterio.errors import NotGeoreferencedWarning

        options: dict[str, Any] = {
            "BLOCKSIZE": self.tile,
            "COMPRESS": (self.codec or "none").upper(),
            "OVERVIEWS": "NONE" if self.overviews is False else "AUTO",
            "RESAMPLING": self.resampling.upper(),
            "BIGTIFF": "IF_SAFER",
        }
        if self.codec in _PREDICTOR_CODECS:
            options["PREDICTOR"] = "YES"  # 2 for integers, 3 for floats
        with warnings.catch_warnings(), _gdal_cache_capped(self.cache_mb), rasterio.Env():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            rasterio.shutil.copy(self._target, self.path, driver="COG", **options)


@contextmanager
def _gdal_cache_capped(cache_mb: int) -> Iterator[None]:
    """Cap GDAL's process-wide block cache at ``cache_mb`` MiB (never raise it), then restore.

    Lowering the cap makes GDAL write dirty blocks out until it is met; ``rasterio.Env``
    would set the cap too but not put the old size back.
    """
    from rasterio.env import get_gdal_config, set_gdal_config

    previous = int(get_gdal_config("GDAL_CACHEMAX"))
    set_gdal_config("GDAL_CACHEMAX", min(previous, int(cache_mb) * 2**20))
    try:
        yield
    finally:
        set_gdal_config("GDAL_CACHEMAX", previous)


def _quantized(data: np.ndarray) -> np.ndarray:
    """(C, h, w) probabilities -> uint8: round(p * 254) in 0..254, NaN -> 255."""
    data = np.asarray(data, dtype=np.float32)
    out = np.rint(np.clip(data, 0.0, 1.0) * 254.0)
    return np.where(np.isnan(data), QUANTIZED_NODATA, out).astype(np.uint8)


def write_geotiff(
    path: PathLike,
    array: np.ndarray,
    crs: Any = None,
    transform: Any = None,
    nodata: float | None = None,
    **kwargs: Any,
) -> Path:
    """Write a (C, H, W) or (H, W) array as a GeoTIFF (a COG unless ``cog=False``).

    Args:
        path: output file.
        array: pixels.
        crs: CRS, as for :class:`GeoTiffWriter`.
        transform: pixel -> map transform, as for :class:`GeoTiffWriter`.
        nodata: nodata value.
        **kwargs: more :class:`GeoTiffWriter` options (``tile``, ``compress``, ``cog``,
            ``quantize``, ...).

    Returns:
        The path written.

    .. versionadded:: 0.1
    """
    array = np.asarray(array)
    with GeoTiffWriter(path, array.shape, array.dtype, crs, transform, nodata, **kwargs) as out:
        step = max(out.tile, 4096 // out.tile * out.tile)  # whole tile rows per write
        for y in range(0, out.shape[1], step):
            rows = array[..., y : y + step, :]
            out.write(y, 0, rows)
    return out.path
