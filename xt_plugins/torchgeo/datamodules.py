"""xView3-style SAR scenes for TorchGeo: checked scene folders, a GeoDataset and a GeoDataModule.

A scene is a folder with ``VV_dB.tif`` and ``VH_dB.tif`` (single-band float32 backscatter in
dB on one grid, with nodata), optional extra bands (``bathymetry.tif``) and a
``detections.csv`` with xView3's columns (``detect_scene_row``, ``detect_scene_column``,
``is_vessel``, ``is_fishing``, ``vessel_length_m``, ``distance_from_shore_km``).
``xt-plugins make-sar-scenes DIR`` writes such folders.

Windows are read pixel-exactly through :class:`~xt_plugins.io.RasterSource` (no resampling),
normalised per band (``(dB - mean) / std``), nodata set to 0 and reported in ``valid``. Labels
become targets on the fly, per ``task``:

- ``detection``: ``heatmap`` (1, h, w) Gaussian centres at ``target_stride``, and ``vessel``,
  ``fishing``, ``length`` (metres), ``shore`` (km) (h, w) maps holding each object's value at
  its centre cell and -1 elsewhere (and where unknown);
- ``classification``: ``label`` 1 when the window contains a vessel centre, else 0;
- ``segmentation``: ``mask`` (H, W): 0 background, 1 vessel, 2 other object (platform), as
  disks sized from the vessel length;
- ``none``: the image only.

.. versionadded:: 0.1
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import shapely
import torch
from geopandas import GeoDataFrame
from torch import Tensor
from torchgeo.datamodules import GeoDataModule
from torchgeo.datasets import GeoDataset

from xt_plugins.io import RasterSource

from ..nn.heads import gaussian_heatmap
from .samplers import NestedRegionGeoSampler, validity_grid

__all__ = [
    "BAND_STATS",
    "SARScene",
    "SARSceneDataModule",
    "SARSceneDataset",
    "SARSceneError",
    "classification_label",
    "detection_targets",
    "find_scenes",
    "segmentation_mask",
]

Task = Literal["detection", "classification", "segmentation", "none"]
TASKS: tuple[str, ...] = ("detection", "classification", "segmentation", "none")

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
_T0 = pd.Timestamp("2000-01-01")


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
    """Validity of a band file (:func:`~xt_plugins.torchgeo.samplers.validity_grid`, cached)."""
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


# ---------------------------------------------------------------------------- targets
def detection_targets(
    objects: pd.DataFrame, y: int, x: int, h: int, w: int, stride: int, sigma: float = 1.5
) -> dict[str, np.ndarray]:
    """xView3 point targets of a window at ``stride`` (see the module docs).

    Args:
        objects: label rows (scene pixel positions and attributes, :data:`LABEL_COLUMNS`).
        y: window top row.
        x: window left column.
        h: window height (a multiple of ``stride``).
        w: window width.
        stride: output stride of the detector.
        sigma: Gaussian width in output cells.

    Returns:
        ``heatmap`` (1, h/s, w/s) and ``vessel``, ``fishing``, ``length``, ``shore``
        (h/s, w/s) float32 arrays (-1 where there is no label).
    """
    if h % stride or w % stride:
        raise ValueError(f"window {h} x {w} px is not a multiple of the target stride {stride}")
    gh, gw = h // stride, w // stride
    rows = ((objects["detect_scene_row"].to_numpy() - y) // stride).astype(np.int64)
    cols = ((objects["detect_scene_column"].to_numpy() - x) // stride).astype(np.int64)
    inside = (rows >= 0) & (rows < gh) & (cols >= 0) & (cols < gw)
    rows, cols, obj = rows[inside], cols[inside], objects[inside]
    out = {"heatmap": gaussian_heatmap(np.stack([rows, cols], 1), (gh, gw), sigma)[None]}
    vessel = obj["is_vessel"].to_numpy()
    fishing = np.where(vessel > 0.5, obj["is_fishing"].to_numpy(), np.nan)
    length = np.where(vessel > 0.5, obj["vessel_length_m"].to_numpy(), np.nan)
    for key, values in (
        ("vessel", vessel),
        ("fishing", fishing),
        ("length", length),
        ("shore", obj["distance_from_shore_km"].to_numpy()),
    ):
        grid = np.full((gh, gw), -1.0, dtype=np.float32)
        grid[rows, cols] = np.where(np.isfinite(values), values, -1.0)
        out[key] = grid
    return out


def segmentation_mask(
    objects: pd.DataFrame, y: int, x: int, h: int, w: int, pixel_size: float
) -> np.ndarray:
    """(h, w) int64 mask: 0 background, 1 vessel, 2 other object (a disk per object).

    Vessels get a disk of radius ``max(2, length_px / 4)``; other objects (and vessels of
    unknown length) a 3-pixel radius.
    """
    mask = np.zeros((h, w), dtype=np.int64)
    rows = objects["detect_scene_row"].to_numpy() - y + 0.5
    cols = objects["detect_scene_column"].to_numpy() - x + 0.5
    vessel = objects["is_vessel"].to_numpy() > 0.5
    length_px = objects["vessel_length_m"].to_numpy() / pixel_size
    radius = np.where(vessel & np.isfinite(length_px), np.maximum(2.0, length_px / 4), 3.0)
    for r, c, rad, v in zip(rows, cols, radius, vessel, strict=True):
        r0, r1 = max(0, int(r - rad)), min(h, int(np.ceil(r + rad)) + 1)
        c0, c1 = max(0, int(c - rad)), min(w, int(np.ceil(c + rad)) + 1)
        if r1 <= r0 or c1 <= c0:
            continue
        yy = np.arange(r0, r1)[:, None] + 0.5 - r
        xx = np.arange(c0, c1)[None, :] + 0.5 - c
        disk = yy**2 + xx**2 <= rad**2
        mask[r0:r1, c0:c1][disk] = 1 if v else 2
    return mask


def classification_label(objects: pd.DataFrame) -> int:
    """1 when any of the window's objects is a vessel, else 0."""
    return int((objects["is_vessel"].to_numpy() > 0.5).any())


# ---------------------------------------------------------------------------- dataset
class SARSceneDataset(GeoDataset):
    """A TorchGeo :class:`~torchgeo.datasets.GeoDataset` over xView3-style scene folders.

    The index has one row per scene (``filepath``: its first band; geometry: its footprint).
    The folders carry no acquisition time, so scene ``i`` gets its own one-day interval from
    2000-01-01 + ``i`` days: scenes that overlap on the map stay apart, and a sampler's time
    slice selects one scene. All scenes must share one CRS and resolution (reads are
    pixel-exact, never resampled).

    Args:
        scenes: scene folders (or opened :class:`SARScene` objects).
        task: ``detection``, ``classification``, ``segmentation`` or ``none`` (see the module
            docs for the targets).
        bands: band names (first: the reference grid).
        target_stride: output stride of the detection targets.
        heatmap_sigma: Gaussian width of the centre heatmap, in output cells.
        band_stats: ``band -> (mean, std)`` overriding :data:`BAND_STATS`.
        transforms: applied to each sample dict.

    Raises:
        SARSceneError: on a bad scene, scenes in different CRSs or resolutions, or a task
            that needs labels on a scene without them.

    .. versionadded:: 0.1
    """

    filename_glob = "*_dB.tif"

    def __init__(
        self,
        scenes: Sequence[str | os.PathLike[str] | SARScene],
        task: Task = "detection",
        bands: Sequence[str] = ("VV", "VH"),
        target_stride: int = 4,
        heatmap_sigma: float = 1.5,
        band_stats: Mapping[str, Sequence[float]] | None = None,
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if not scenes:
            raise ValueError("SARSceneDataset needs at least one scene")
        self.task = task
        self.target_stride = int(target_stride)
        self.heatmap_sigma = float(heatmap_sigma)
        self.transforms = transforms
        self.scenes = [
            s if isinstance(s, SARScene) else SARScene(s, bands, band_stats) for s in scenes
        ]
        self.paths = [s.path for s in self.scenes]
        self.all_bands = tuple(self.scenes[0].bands)
        first = self.scenes[0]
        for s in self.scenes[1:]:
            if s.crs != first.crs:
                raise SARSceneError(
                    f"{s.path}: CRS {s.crs} differs from {first.path.name}'s {first.crs}; "
                    "reproject the scenes to one CRS or use one dataset per CRS"
                )
            if not np.allclose(s.res, first.res):
                raise SARSceneError(
                    f"{s.path}: resolution {s.res} differs from {first.path.name}'s {first.res}"
                )
            if task != "none":
                s.detections  # noqa: B018 (fail early on missing labels)
        if task != "none":
            first.detections  # noqa: B018
        intervals = [
            (_T0 + pd.Timedelta(days=i), _T0 + pd.Timedelta(days=i, hours=12))
            for i in range(len(self.scenes))
        ]
        self.index = GeoDataFrame(
            {"filepath": [str(s.files[s.bands[0]]) for s in self.scenes]},
            index=pd.IntervalIndex.from_tuples(intervals, closed="both", name="datetime"),
            geometry=[shapely.box(*s.bounds) for s in self.scenes],
            crs=first.crs.to_wkt() if first.crs is not None else None,
        )
        self._res = (float(first.res[0]), float(first.res[1]))

    # ------------------------------------------------------------------------ indexing
    def _locate(self, index: Any) -> tuple[int, tuple[int, int, int, int], tuple[slice, slice]]:
        """Scene number and pixel window ``(y, x, h, w)`` of a GeoSlice."""
        x, y, t = self._disambiguate_slice(index)
        hits = self.index.index.overlaps(pd.Interval(t.start, t.stop, closed="both"))
        box = shapely.box(x.start, y.start, x.stop, y.stop)
        rows = [i for i in np.flatnonzero(hits) if self.index.geometry.iloc[i].intersects(box)]
        if not rows:
            raise IndexError(f"index {index} is not in any scene of {type(self).__name__}")
        i = int(rows[0])
        scene = self.scenes[i]
        xres, yres = scene.res
        for step, res, axis in ((x.step, xres, "x"), (y.step, yres, "y")):
            if step is not None and not np.isclose(step, res, rtol=1e-6):
                raise ValueError(
                    f"{scene.path}: requested {axis} resolution {step} but the scene has {res}; "
                    "SARSceneDataset reads pixel-exact windows (no resampling)"
                )
        left, _, _, top = scene.bounds
        pos = np.array(
            [
                (top - y.stop) / yres,
                (x.start - left) / xres,
                (y.stop - y.start) / yres,
                (x.stop - x.start) / xres,
            ]
        )
        px = np.rint(pos).astype(np.int64)
        if np.abs(pos - px).max() > 1e-3:
            raise ValueError(
                f"{scene.path}: window {index} is not aligned to the scene's pixel grid"
            )
        return i, (int(px[0]), int(px[1]), int(px[2]), int(px[3])), (x, y)

    def __getitem__(self, index: Any) -> dict[str, Any]:
        """Sample of a window: ``image``, ``valid``, ``bounds``, ``transform`` and targets.

        Args:
            index: ``(slice(x0, x1, xres), slice(y0, y1, yres), slice(t0, t1))``.

        Returns:
            The sample dict (see the module docs for the target keys).

        Raises:
            IndexError: if the slice hits no scene.
        """
        from rasterio.transform import from_origin

        i, (y0, x0, h, w), (xs, ys) = self._locate(index)
        scene = self.scenes[i]
        image, valid = scene.read_with_mask(y0, x0, h, w)
        sample: dict[str, Any] = {
            "image": torch.from_numpy(image),
            "valid": torch.from_numpy(valid[None].astype(np.float32)),
            "bounds": self._slice_to_tensor(index),
            "transform": torch.tensor(from_origin(xs.start, ys.stop, *scene.res)),
        }
        if self.task != "none":
            objects = scene.objects_in(y0, x0, h, w)
            if self.task == "detection":
                targets = detection_targets(
                    objects, y0, x0, h, w, self.target_stride, self.heatmap_sigma
                )
                sample.update({k: torch.from_numpy(v) for k, v in targets.items()})
            elif self.task == "classification":
                sample["label"] = torch.tensor(classification_label(objects))
            else:
                mask = segmentation_mask(objects, y0, x0, h, w, float(scene.res[0]))
                sample["mask"] = torch.from_numpy(mask)
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample

    def plot(self, sample: Mapping[str, Any], suptitle: str | None = None) -> Any:
        """VV backscatter with the target (and ``prediction`` if present).

        Args:
            sample: a sample (or an unbound batch element).
            suptitle: figure title.

        Returns:
            A matplotlib Figure.
        """
        import matplotlib.pyplot as plt

        panels = [("VV (normalised)", sample["image"][0])]
        for key in ("mask", "heatmap", "prediction"):
            if key in sample and isinstance(sample[key], Tensor) and sample[key].ndim >= 2:
                panels.append((key, sample[key].squeeze()))
        fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
        for ax, (title, img) in zip(axes[0], panels, strict=True):
            ax.imshow(np.asarray(img.detach().cpu().float()), cmap="gray")
            ax.set_title(title)
            ax.axis("off")
        if "label" in sample:
            fig.text(0.01, 0.01, f"label: {int(sample['label'])}")
        if suptitle:
            fig.suptitle(suptitle)
        return fig


# ---------------------------------------------------------------------------- datamodule
def split_scenes(
    scenes: Sequence[Path], val_fraction: float, test_fraction: float
) -> dict[str, list[Path]]:
    """Split scenes in order: the last ones go to test, the ones before them to val.

    Val and test get ``round(n * fraction)`` scenes (at least one when the fraction is
    positive and enough scenes exist); train keeps at least one. With a single scene every
    split uses it (a warning says so).
    """
    n = len(scenes)
    if n == 1:
        warnings.warn(f"only one scene ({scenes[0]}): train, val and test all use it", stacklevel=2)
        return {"train": list(scenes), "val": list(scenes), "test": list(scenes)}
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 and n >= 3 else 0
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    n_val = min(n_val, n - n_test - 1)
    train = list(scenes[: n - n_val - n_test])
    val = list(scenes[n - n_val - n_test : n - n_test])
    test = list(scenes[n - n_test :]) or val
    return {"train": train, "val": val or train, "test": test or train}


class SARSceneDataModule(GeoDataModule):
    """xView3-style SAR scenes for ``torchgeo fit``: scene splits, region-aligned windows.

    Windows come from :class:`NestedRegionGeoSampler` (aligned to the xT region grid, windows
    with less than ``min_valid`` data skipped): shuffled in training, in order for
    validation / test / predict. Scenes are split by folder (never a scene in two splits,
    unless there is only one).

    Why a :class:`~torchgeo.datamodules.GeoDataModule`: ``torchgeo fit`` accepts only
    TorchGeo data modules, and its geo sampler / collate / ``setup()`` protocol is exactly
    what is needed here; normalisation happens in the dataset (per band, dB), so the batch
    augmentation is the identity.

    Args:
        root: folder of scene folders (``data/sar_scenes``: see ``xt-plugins
            make-sar-scenes``).
        task: ``detection``, ``classification``, ``segmentation`` or ``none``.
        window_px: window side in pixels (a multiple of ``region_px``).
        region_px: xT region side (the model's ``region_size``).
        stride_px: training window step (default ``window_px``); val / test use
            ``window_px``.
        batch_size: windows per batch.
        num_workers: data loader workers.
        min_valid: smallest fraction of valid pixels of a window.
        bands: band names.
        target_stride: output stride of the detection targets (the detector's out_stride).
        heatmap_sigma: Gaussian width of centre targets, in output cells.
        val_fraction: share of scenes for validation.
        test_fraction: share of scenes for test (0: test on the validation scenes).
        train_scenes: explicit train scene folder names (overrides the fractions).
        val_scenes: explicit validation scene names.
        test_scenes: explicit test scene names.
        length: training windows per epoch (default: every valid window once).
        band_stats: ``band -> (mean, std)`` overriding :data:`BAND_STATS`.
        seed: seed of the training window order.

    .. versionadded:: 0.1
    """

    # Normalisation happens in the dataset; Denormalize in TorchGeo's plots is the identity.
    mean = torch.tensor(0.0)
    std = torch.tensor(1.0)

    def __init__(
        self,
        root: str = "data/sar_scenes",
        task: Task = "detection",
        window_px: int = 1024,
        region_px: int = 256,
        stride_px: int | None = None,
        batch_size: int = 2,
        num_workers: int = 0,
        min_valid: float = 0.5,
        bands: Sequence[str] = ("VV", "VH"),
        target_stride: int = 4,
        heatmap_sigma: float = 1.5,
        val_fraction: float = 0.25,
        test_fraction: float = 0.0,
        train_scenes: list[str] | None = None,
        val_scenes: list[str] | None = None,
        test_scenes: list[str] | None = None,
        length: int | None = None,
        band_stats: dict[str, tuple[float, float]] | None = None,
        seed: int = 0,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if window_px % region_px:
            raise ValueError(f"window_px={window_px} must be a multiple of region_px={region_px}")
        if task == "detection" and window_px % target_stride:
            raise ValueError(
                f"window_px={window_px} must be a multiple of target_stride={target_stride}"
            )
        super().__init__(
            SARSceneDataset,
            batch_size=batch_size,
            patch_size=window_px,
            length=length,
            num_workers=num_workers,
            task=task,
            bands=tuple(bands),
            target_stride=target_stride,
            heatmap_sigma=heatmap_sigma,
            band_stats=band_stats,
        )
        self.root = root
        self.task = task
        self.window_px = window_px
        self.region_px = region_px
        self.stride_px = stride_px
        self.min_valid = min_valid
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.explicit = {"train": train_scenes, "val": val_scenes, "test": test_scenes}
        self.seed = seed
        self.aug = _identity

    def scene_splits(self) -> dict[str, list[Path]]:
        """Scene folders of each split (``train``, ``val``, ``test``, ``predict``)."""
        scenes = find_scenes(self.root)
        splits = split_scenes(scenes, self.val_fraction, self.test_fraction)
        by_name = {p.name: p for p in scenes}
        for split, names in self.explicit.items():
            if names is not None:
                unknown = [n for n in names if n not in by_name]
                if unknown:
                    raise FileNotFoundError(
                        f"{self.root}: {split}_scenes {unknown} not found; scenes there: "
                        f"{sorted(by_name)}"
                    )
                splits[split] = [by_name[n] for n in names]
        splits["predict"] = splits["test"]
        return splits

    def _dataset(self, scenes: Sequence[Path]) -> SARSceneDataset:
        return SARSceneDataset(scenes, **self.kwargs)

    def _sampler(self, dataset: SARSceneDataset, train: bool) -> NestedRegionGeoSampler:
        generator = torch.Generator().manual_seed(self.seed) if train else None
        return NestedRegionGeoSampler(
            dataset,
            self.window_px,
            self.region_px,
            stride=(self.stride_px or self.window_px) if train else self.window_px,
            min_valid=self.min_valid,
            shuffle=train,
            length=self.length if train else None,
            generator=generator,
        )

    def setup(self, stage: str) -> None:
        """Open the scenes of the stage's splits and build their samplers.

        Args:
            stage: ``fit``, ``validate``, ``test`` or ``predict``.
        """
        splits = self.scene_splits()
        if stage == "fit":
            self.train_dataset = self._dataset(splits["train"])
            self.train_sampler = self._sampler(self.train_dataset, train=True)
        if stage in ("fit", "validate"):
            self.val_dataset = self._dataset(splits["val"])
            self.val_sampler = self._sampler(self.val_dataset, train=False)
        if stage == "test":
            self.test_dataset = self._dataset(splits["test"])
            self.test_sampler = self._sampler(self.test_dataset, train=False)
        if stage == "predict":
            self.predict_dataset = self._dataset(splits["predict"])
            self.predict_sampler = self._sampler(self.predict_dataset, train=False)

    def teardown(self, stage: str) -> None:
        """Close the scenes' file handles (they reopen if the datasets are used again).

        Args:
            stage: ``fit``, ``validate``, ``test`` or ``predict``.
        """
        for name in ("train_dataset", "val_dataset", "test_dataset", "predict_dataset"):
            dataset = getattr(self, name, None)
            for scene in getattr(dataset, "scenes", ()):
                scene.close()


def _identity(batch: dict[str, Any]) -> dict[str, Any]:
    return batch
