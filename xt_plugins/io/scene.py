"""xView3-style SAR scene folders as lazy multi-band sources, checked on opening.

A scene is a folder with ``VV_dB.tif`` and ``VH_dB.tif`` (single-band float32 backscatter in
dB on one grid, with nodata), optional extra bands (``bathymetry.tif``) and a
``detections.csv`` with xView3's columns (``detect_scene_row``, ``detect_scene_column``,
``is_vessel``, ``is_fishing``, ``vessel_length_m``, ``distance_from_shore_km``).
``xt-plugins make-sar-scenes DIR`` writes such folders.

Windows are read pixel-exactly through :class:`~xt_plugins.io.RasterSource` (no resampling),
normalised per band (``(dB - mean) / std``), nodata set to 0 and reported in ``valid``.

.. versionadded:: 0.2
   Moved here from ``xt_plugins.torchgeo.datamodules`` (still importable there).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .masks import validity_grid
from .raster import RasterSource

__all__ = [
    "BAND_STATS",
    "CLIP",
    "LABEL_COLUMNS",
    "SARScene",
    "SARSceneError",
    "band_file",
    "find_scenes",
    "scene_validity",
]

#: Default normalisation per band: ``(value - mean) / std`` (dB for VV / VH, metres else).
BAND_STATS: dict[str, tuple[float, float]] = {
    "VV": (-18.0, 6.0),
    "VH": (-25.0, 6.0),
    "bathymetry": (0.0, 100.0),
}
#: Normalised values are clipped to +- this (bright targets and deep sea stay in range).
CLIP = 10.0
#: Label columns read from ``detections.csv`` (the first two are required).
LABEL_COLUMNS = (
    "detect_scene_row",
    "detect_scene_column",
    "is_vessel",
    "is_fishing",
    "vessel_length_m",
    "distance_from_shore_km",
)


class SARSceneError(ValueError):
    """A scene folder is unusable; the message names the file and the problem.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------- scenes
def band_file(scene_dir: Path, band: str) -> Path:
    """The file of ``band`` in a scene folder: ``<band>_dB.tif`` or ``<band>.tif``.

    Raises:
        SARSceneError: if neither exists.
    """
    for name in (f"{band}_dB.tif", f"{band}.tif"):
        if (scene_dir / name).is_file():
            return scene_dir / name
    raise SARSceneError(
        f"{scene_dir / f'{band}_dB.tif'}: missing {band} file; a scene folder needs "
        f"{band}_dB.tif (or {band}.tif) next to the other bands"
    )


def find_scenes(root: str | os.PathLike[str]) -> list[Path]:
    """Scene folders under ``root`` (sorted), or ``[root]`` when it is a scene itself.

    A scene folder is a directory holding a ``*.tif`` or a ``detections.csv``.

    Raises:
        FileNotFoundError: if ``root`` does not exist or holds no scene.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root}: no such folder; write synthetic scenes with `xt-plugins make-sar-scenes "
            f"{root}`"
        )

    def is_scene(p: Path) -> bool:
        return any(p.glob("*.tif")) or (p / "detections.csv").is_file()

    if is_scene(root):
        return [root]
    scenes = sorted(p for p in root.iterdir() if p.is_dir() and is_scene(p))
    if not scenes:
        raise FileNotFoundError(
            f"{root}: no scene folders (folders with VV_dB.tif / VH_dB.tif) found; write "
            f"synthetic ones with `xt-plugins make-sar-scenes {root}`"
        )
    return scenes


def scene_validity(path: str | os.PathLike[str]) -> tuple[np.ndarray, tuple[float, float]]:
    """Validity of a band file (:func:`~xt_plugins.io.masks.validity_grid`, cached)."""
    return validity_grid(path)


def _grid_difference(a: RasterSource, b: RasterSource) -> str | None:
    if a.shape[1:] != b.shape[1:]:
        return f"size {b.shape[2]} x {b.shape[1]} px vs {a.shape[2]} x {a.shape[1]} px"
    if not b.transform.almost_equals(a.transform, precision=1e-6 * max(abs(a.res[0]), 1e-9)):
        return f"transform {tuple(b.transform)[:6]} vs {tuple(a.transform)[:6]}"
    if (a.crs is None) != (b.crs is None) or (a.crs is not None and a.crs != b.crs):
        return f"CRS {b.crs} vs {a.crs}"
    return None


def _as_float(values: pd.Series) -> np.ndarray:
    """Booleans / numbers / NaN (also ``"True"`` strings) as float64 with NaN."""
    if values.dtype == object:
        values = values.map(
            lambda v: (
                {"true": 1.0, "false": 0.0}.get(v.strip().lower(), np.nan)
                if isinstance(v, str)
                else v
            )
        )
    return pd.to_numeric(values, errors="coerce").astype(np.float64).to_numpy()


class SARScene:
    """An xView3-style scene folder, checked on opening and read window by window.

    Checks, in order (each failure is a :class:`SARSceneError` or
    :class:`~xt_plugins.io.ImageReadError` naming the file): every band file exists and
    opens; its pixels can be read (a decimated pass, full resolution up to 4096 px a side);
    it has exactly one band; all bands share one grid (size, transform, CRS); and the scene
    has at least one valid pixel.

    Args:
        path: the scene folder.
        bands: band names, each a file ``<band>_dB.tif`` or ``<band>.tif`` (VV and VH first).
        band_stats: ``band -> (mean, std)`` overriding :data:`BAND_STATS`.
        check: read the validity masks now (pixels readable, not all nodata).

    Attributes:
        name: folder name.
        files: band -> file.
        height: rows.
        width: columns.
        crs: CRS of the grid.
        transform: pixel -> map affine transform.
        res: (x, y) pixel size in map units.

    Raises:
        SARSceneError: on a missing band file, a wrong band count, disagreeing grids, a
            missing normalisation, or an all-nodata scene.
        ImageReadError: if a file cannot be opened or read.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        bands: Sequence[str] = ("VV", "VH"),
        band_stats: Mapping[str, Sequence[float]] | None = None,
        check: bool = True,
    ) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_dir():
            raise SARSceneError(f"{self.path}: not a scene folder (no such directory)")
        if not bands:
            raise SARSceneError(f"{self.path}: no bands requested")
        self.name = self.path.name
        self.bands = tuple(bands)
        self.files = {b: band_file(self.path, b) for b in self.bands}
        stats = {**BAND_STATS, **{k: tuple(v) for k, v in (band_stats or {}).items()}}
        missing = [b for b in self.bands if b not in stats]
        if missing:
            raise SARSceneError(
                f"{self.path}: no normalisation for band(s) {missing}; pass band_stats="
                "{band: (mean, std)}"
            )
        self.stats = np.array([stats[b] for b in self.bands], dtype=np.float32)  # (C, 2)
        self.sources = {b: RasterSource(f) for b, f in self.files.items()}
        if check:
            for band in self.bands:
                scene_validity(self.files[band])  # pixels readable (ImageReadError otherwise)
        for band, src in self.sources.items():
            if src.channels != 1:
                raise SARSceneError(
                    f"{self.files[band]}: expected 1 band ({band}), found {src.channels}; "
                    "each band of a scene is its own single-band GeoTIFF"
                )
        ref = self.sources[self.bands[0]]
        for band in self.bands[1:]:
            diff = _grid_difference(ref, self.sources[band])
            if diff:
                raise SARSceneError(
                    f"{self.files[band]}: its grid disagrees with {self.files[self.bands[0]].name}"
                    f" ({diff}); all bands of a scene must share one grid"
                )
        _, self.height, self.width = ref.shape
        self.crs, self.transform, self.res = ref.crs, ref.transform, ref.res
        self.shape = (len(self.bands), self.height, self.width)
        if check and not self.validity()[0].any():
            raise SARSceneError(
                f"{self.files[self.bands[0]]}: every pixel is nodata ({ref.nodata}); the scene "
                "has no data to train on or predict"
            )
        self._detections: pd.DataFrame | None = None

    def __repr__(self) -> str:
        return (
            f"SARScene({self.name!r}, bands={list(self.bands)}, "
            f"{self.height} x {self.width} px, crs={self.crs})"
        )

    # ------------------------------------------------------------------------ geometry
    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) in map units."""
        b = self.sources[self.bands[0]].bounds
        return (b.left, b.bottom, b.right, b.top)

    def validity(self) -> tuple[np.ndarray, tuple[float, float]]:
        """Coarse validity of the first band (see :func:`validity_grid`)."""
        return scene_validity(self.files[self.bands[0]])

    def pixel_to_map(self, rows: Any, cols: Any) -> tuple[np.ndarray, np.ndarray]:
        """Map coordinates of (fractional) pixel positions (``row + 0.5`` is a pixel centre)."""
        return self.sources[self.bands[0]].pixel_to_map(rows, cols, offset="ul")

    # ------------------------------------------------------------------------ reading
    @property
    def channels(self) -> int:
        """Number of bands."""
        return len(self.bands)

    def read_with_mask(self, y: int, x: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """Normalised window and its validity.

        Returns:
            ``(image, valid)``: (C, h, w) float32 normalised, 0 on nodata and outside the
            scene; (h, w) bool, True where every band has data.
        """
        out = np.zeros((self.channels, h, w), dtype=np.float32)
        valid = np.ones((h, w), dtype=bool)
        for i, band in enumerate(self.bands):
            data, mask = self.sources[band].read_with_mask(y, x, h, w)
            if mask is not None:
                valid &= mask
            mean, std = self.stats[i]
            out[i] = np.clip((data[0].astype(np.float32) - mean) / std, -CLIP, CLIP)
        out[:, ~valid] = 0.0
        return out, valid

    def read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        """Normalised (C, h, w) window (a source for :func:`xt_plugins.stream_predict`)."""
        return self.read_with_mask(y, x, h, w)[0]

    def read_mask(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        """(h, w) validity of a window."""
        return self.read_with_mask(y, x, h, w)[1]

    def close(self) -> None:
        """Close the band files (a later read reopens them)."""
        for src in self.sources.values():
            src.close()

    # ------------------------------------------------------------------------ labels
    @property
    def labels_path(self) -> Path:
        """The scene's ``detections.csv``."""
        return self.path / "detections.csv"

    @property
    def detections(self) -> pd.DataFrame:
        """Label table: :data:`LABEL_COLUMNS` as float64 (NaN where unknown).

        Raises:
            SARSceneError: if ``detections.csv`` is missing or lacks the position columns.
        """
        if self._detections is None:
            if not self.labels_path.is_file():
                raise SARSceneError(
                    f"{self.labels_path}: no such file; training and scoring need the "
                    "scene's labels (xView3 columns detect_scene_row, detect_scene_column, ...)"
                )
            try:
                raw = pd.read_csv(self.labels_path)
            except (pd.errors.ParserError, UnicodeDecodeError) as e:
                raise SARSceneError(f"{self.labels_path}: not a readable CSV: {e}") from e
            missing = [c for c in LABEL_COLUMNS[:2] if c not in raw.columns]
            if missing:
                raise SARSceneError(f"{self.labels_path}: missing column(s) {missing}")
            table = pd.DataFrame(
                {
                    c: _as_float(raw[c]) if c in raw.columns else np.full(len(raw), np.nan)
                    for c in LABEL_COLUMNS
                }
            )
            self._detections = table
        return self._detections

    def objects_in(self, y: int, x: int, h: int, w: int) -> pd.DataFrame:
        """Label rows whose centre pixel lies in the window ``(y, x, h, w)``."""
        d = self.detections
        r, c = d["detect_scene_row"].to_numpy(), d["detect_scene_column"].to_numpy()
        inside = (r >= y) & (r < y + h) & (c >= x) & (c < x + w)
        return d[inside]
