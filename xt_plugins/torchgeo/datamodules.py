"""xView3-style SAR scenes for TorchGeo: checked scene folders, a GeoDataset and a GeoDataModule.

:class:`SARSceneDataModule` splits folders of scenes (``xt-plugins make-sar-scenes DIR`` writes
them) by scene and cuts region-aligned windows for ``torchgeo fit``. What it builds on is
re-exported here: the scene folders (:class:`SARScene`, :func:`find_scenes`, ...) from
:mod:`xt_plugins.io.scene`, the targets of each ``task`` from :mod:`xt_plugins.data.xview3` and
:class:`SARSceneDataset` from :mod:`xt_plugins.torchgeo.datasets`.

.. versionadded:: 0.1
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torchgeo.datamodules import GeoDataModule

from ..data.xview3 import classification_label, detection_targets, segmentation_mask
from ..io.scene import (
    BAND_STATS,
    CLIP,
    LABEL_COLUMNS,
    SARScene,
    SARSceneError,
    band_file,
    find_scenes,
    scene_validity,
)
from .datasets import TASKS, SARSceneDataset, Task
from .samplers import NestedRegionGeoSampler, validity_grid

__all__ = [
    "BAND_STATS",
    "CLIP",
    "LABEL_COLUMNS",
    "TASKS",
    "SARScene",
    "SARSceneDataModule",
    "SARSceneDataset",
    "SARSceneError",
    "band_file",
    "classification_label",
    "detection_targets",
    "find_scenes",
    "scene_validity",
    "segmentation_mask",
    "split_scenes",
    "validity_grid",
]


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
