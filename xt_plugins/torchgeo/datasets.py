"""xView3-style SAR scenes as a TorchGeo ``GeoDataset`` (:class:`SARSceneDataset`).

Windows are read from :class:`~xt_plugins.io.scene.SARScene` folders (pixel-exact, normalised
per band, nodata 0 and reported in ``valid``); labels become targets on the fly, per ``task``
(see :mod:`xt_plugins.data.xview3`): ``detection`` (``heatmap``, ``vessel``, ``fishing``,
``length``, ``shore``), ``classification`` (``label``), ``segmentation`` (``mask``) or
``none`` (the image only).

.. versionadded:: 0.2
   Moved here from ``xt_plugins.torchgeo.datamodules`` (still importable there).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import shapely
import torch
from geopandas import GeoDataFrame
from torch import Tensor
from torchgeo.datasets import GeoDataset

from ..data.xview3 import classification_label, detection_targets, segmentation_mask
from ..io.scene import SARScene, SARSceneError

__all__ = ["TASKS", "SARSceneDataset", "Task"]

Task = Literal["detection", "classification", "segmentation", "none"]
TASKS: tuple[str, ...] = ("detection", "classification", "segmentation", "none")
_T0 = pd.Timestamp("2000-01-01")


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
        band_stats: ``band -> (mean, std)`` overriding
            :data:`~xt_plugins.io.scene.BAND_STATS`.
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
