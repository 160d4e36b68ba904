"""Whole-slide data for MONAI: slides at a target mpp, tissue masks, nested-region datasets.

Slides are read through :class:`xt_plugins.io.SlideSource` (MONAI's
``WSIReader(backend="openslide")``). The tissue mask comes from a low-resolution level (Otsu on
HSV saturation, small objects and holes removed); each region of the model's grid gets its tissue
fraction from it, and only regions (or windows of regions) with tissue are used.

Opening slides and listing folders of them (:func:`open_slide`, :func:`read_slide_data`,
:func:`slide_collate`) live in :mod:`xt_plugins.monai.slides`, the tissue masks in
:mod:`xt_plugins.io.masks`; both are re-exported here.

.. versionadded:: 0.1
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from monai.data import MetaTensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..io import SlideSource
from ..io.masks import (
    NoTissueError,
    SlideTooSmallError,
    TissueMask,
    region_tissue_fraction,
    slide_region_mask,
    tissue_mask,
)
from .slides import FOLDER_SUFFIXES, MAX_UPSAMPLE, open_slide, read_slide_data, slide_collate

__all__ = [
    "FOLDER_SUFFIXES",
    "MAX_UPSAMPLE",
    "NestedRegionWSIDataset",
    "NoTissueError",
    "SlideTooSmallError",
    "TissueMask",
    "open_slide",
    "read_slide_data",
    "region_tissue_fraction",
    "slide_collate",
    "slide_region_mask",
    "tissue_mask",
]

Mode = Literal["window", "region", "slide"]


# ---------------------------------------------------------------------------- dataset
@dataclass(frozen=True)
class _SlideIndex:
    path: str
    label: Any
    source: SlideSource
    fractions: np.ndarray  # (rows, cols)
    extra: dict[str, Any]


class NestedRegionWSIDataset(Dataset):
    """Slides + labels as MONAI dict items of nested regions at a chosen resolution.

    Three modes:

    - ``"window"``: windows of ``window_regions x window_regions`` regions (the model's input
      for window-level training with a plain forward), tissue windows only. Item ``"image"``
      is a (3, n*r, n*r) uint8 :class:`~monai.data.MetaTensor`.
    - ``"region"`` (whole-slide mode): every tissue region of every slide, in scan order per
      slide; item ``"image"`` is (3, r, r) and ``"grid"`` its (row, col).
    - ``"slide"``: one item per slide for slide-level training at bounded memory: ``"image"``
      is the lazy :class:`~xt_plugins.io.SlideSource` and ``"region_mask"`` the (rows, cols)
      bool tissue mask of its regions. Use ``collate_fn=slide_collate`` and feed the batch to
      :class:`~xt_plugins.monai.SlideStreamingInferer` (see ``prepare_slide_batch``).

    Every item has ``"label"`` (when the data has one) and ``"path"``; window and region items
    have ``"location"`` (level-0 (y, x) of the top-left pixel), ``"size"`` (level-0 (h, w)),
    ``"grid"`` ((row, col) of the first region) and ``"tissue"`` (tissue fraction), also in the
    image's ``meta`` with ``"level"`` and ``"mpp"``. ``transform`` (e.g. a MONAI ``Compose`` of
    dict transforms) is applied to each item.

    Slides that cannot be opened, are too small or show no tissue are skipped with a warning
    naming them (``on_error="raise"`` raises instead).

    Args:
        data: ``[{"image": path, "label": ...}, ...]`` (see :func:`read_slide_data`) or paths.
        mode: ``"window"``, ``"region"`` or ``"slide"``.
        mpp: target microns per pixel.
        slide_mpp: level-0 mpp for slides that do not record it.
        region_size: region side in pixels at ``mpp``.
        window_regions: regions per window side (window mode).
        window_stride: step between windows in regions (default: ``window_regions``).
        min_tissue: tissue fraction a region (window: its regions on average) needs.
        transform: callable applied to each item dict.
        tissue_kwargs: options of :func:`tissue_mask`.
        on_error: ``"warn"`` (skip bad slides) or ``"raise"``.
        progress: show a progress bar while the slides are indexed (one tissue mask each).

    Raises:
        ValueError: on a bad mode, or when no slide is usable.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        data: Sequence[Mapping[str, Any] | str | os.PathLike[str]],
        *,
        mode: Mode = "window",
        mpp: float = 0.5,
        slide_mpp: float | None = None,
        region_size: int = 256,
        window_regions: int = 4,
        window_stride: int | None = None,
        min_tissue: float = 0.1,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        tissue_kwargs: Mapping[str, Any] | None = None,
        on_error: Literal["warn", "raise"] = "warn",
        progress: bool = True,
    ) -> None:
        if mode not in ("window", "region", "slide"):
            raise ValueError(f"mode must be 'window', 'region' or 'slide', got {mode!r}")
        if window_regions < 1:
            raise ValueError(f"window_regions must be >= 1, got {window_regions}")
        self.mode = mode
        self.mpp = mpp
        self.region_size = region_size
        self.window_regions = window_regions
        self.window_stride = window_stride or window_regions
        self.min_tissue = min_tissue
        self.transform = transform
        self.slides: list[_SlideIndex] = []
        self.failed: dict[str, str] = {}
        for entry in tqdm(data, desc="indexing slides", unit="slide", disable=not progress):
            item = dict(entry) if isinstance(entry, Mapping) else {"image": entry}
            path = str(item.pop("image"))
            label = item.pop("label", None)
            try:
                source = open_slide(path, mpp=mpp, slide_mpp=slide_mpp)
                _, fractions, _ = slide_region_mask(
                    source, region_size, min_tissue=min_tissue, **dict(tissue_kwargs or {})
                )
            except Exception as err:
                if on_error == "raise":
                    raise
                message = str(err) if path in str(err) else f"{path}: {err}"
                self.failed[path] = message
                warnings.warn(f"skipping slide {message}", stacklevel=2)
                continue
            self.slides.append(_SlideIndex(path, label, source, fractions, item))
        if not self.slides:
            raise ValueError(f"no usable slide in the data: {self.failed}")
        self.index = self._build_index()

    # ------------------------------------------------------------------------ index
    def _build_index(self) -> list[tuple[int, int, int, float]]:
        """(slide, row, col, tissue fraction) of every item; row/col of its first region."""
        index: list[tuple[int, int, int, float]] = []
        for s, slide in enumerate(self.slides):
            fr = slide.fractions  # (rows, cols)
            if self.mode == "slide":
                index.append((s, 0, 0, float(fr.mean())))
            elif self.mode == "region":
                for r, c in zip(*np.nonzero(fr >= self.min_tissue), strict=True):
                    index.append((s, int(r), int(c), float(fr[r, c])))
            else:
                n, step = self.window_regions, self.window_stride
                for r in range(0, fr.shape[0], step):
                    for c in range(0, fr.shape[1], step):
                        tile = fr[r : r + n, c : c + n]
                        value = float(tile.sum()) / (n * n)  # regions beyond the slide: none
                        if value >= self.min_tissue:
                            index.append((s, r, c, value))
        return index

    def __len__(self) -> int:
        return len(self.index)

    def region_masks(self) -> list[np.ndarray]:
        """(rows, cols) bool tissue-region mask of every usable slide, in order."""
        return [s.fractions >= self.min_tissue for s in self.slides]

    # ------------------------------------------------------------------------ items
    def __getitem__(self, i: int) -> Any:
        s, row, col, fraction = self.index[i]
        slide = self.slides[s]
        item: dict[str, Any] = {"path": slide.path, **slide.extra}
        if slide.label is not None:
            item["label"] = torch.as_tensor(slide.label)
        if self.mode == "slide":
            item["image"] = slide.source
            item["region_mask"] = torch.from_numpy(slide.fractions >= self.min_tissue)
            item["tissue"] = fraction
        else:
            n = 1 if self.mode == "region" else self.window_regions
            r, src = self.region_size, slide.source
            side = n * r
            pixels = src.read(row * r, col * r, side, side)  # (3, side, side) uint8
            location = [round(row * r * src.scale), round(col * r * src.scale)]
            size = [round(side * src.scale)] * 2
            meta = {
                "location": location,
                "size": size,
                "grid": [row, col],
                "level": src.level,
                "mpp": src.mpp,
                "path": slide.path,
            }
            item.update(
                image=MetaTensor(torch.from_numpy(pixels), meta=meta),
                location=torch.tensor(location),
                size=torch.tensor(size),
                grid=torch.tensor([row, col]),
                tissue=fraction,
            )
        return self.transform(item) if self.transform is not None else item
