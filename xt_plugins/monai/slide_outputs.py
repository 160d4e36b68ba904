"""Whole-slide outputs: the slide prediction record, its CSV row, heatmap, GeoJSON, OME-Zarr map.

- ``<stem>.geojson``: QuPath 0.4+ objects (``objectType`` ``tile``) in level-0 pixels, one
  square per region: the positive regions (``geojson="positive"``, the default, as before) or
  every tissue region (``geojson="tissue"``: QuPath's measurement maps then colour the whole
  slide by ``prob_<class>``). A region whose positive probability reaches the threshold is
  classified as the positive class (name and colour), others are unclassified; measurements
  are ``prob_<class>`` for every class, ``tissue`` (fraction), ``row`` and ``col``.
- ``<stem>.zarr/map``: the (C, rows, cols) region probabilities as an OME-Zarr multiscale
  image (:func:`xt_plugins.io.write_ome_zarr_map`) whose scale is ``region_size * mpp`` um
  per map pixel, next to the run store's plain ``probs`` array (which resume reads).

.. versionadded:: 0.2
   Split out of ``xt_plugins.monai.inferers``; QuPath tiles and the OME-Zarr ``map``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..infer.runner import InputItem
from ..io import SlideSource, save_heatmap_png, write_ome_zarr_map, write_qupath_geojson
from ..io.masks import TissueMask

__all__ = [
    "CSV_FIELDS",
    "SlidePrediction",
    "class_names",
    "slide_item",
    "write_heatmap",
    "write_region_geojson",
    "write_slide_attrs",
    "write_slide_files",
]

#: ``geojson`` values: which regions go into the slide's GeoJSON.
GEOJSON_REGIONS = ("positive", "tissue")

#: Columns of the slide prediction CSV (one row per slide, keyed by ``path``).
CSV_FIELDS = (
    "slide",
    "path",
    "status",
    "label",
    "prediction",
    "probability",
    "probabilities",
    "regions",
    "tissue_regions",
    "positive_regions",
    "seconds",
    "zarr",
    "heatmap",
    "geojson",
    "error",
)


@dataclass
class SlidePrediction:
    """The outcome of one slide in :class:`~xt_plugins.monai.WholeSlideInferer`.

    Attributes:
        slide: file name.
        path: absolute slide path (the key of its CSV row).
        status: ``"ok"`` or ``"error"``.
        label: the true label when the input had one.
        prediction: predicted class.
        probability: probability of the positive class.
        probabilities: probability of every class.
        logits: slide logits.
        regions: regions in the grid.
        tissue_regions: regions with tissue (the ones encoded).
        positive_regions: regions whose positive probability reaches the threshold.
        seconds: wall time for the slide.
        zarr: region probability map (``probs`` (num_classes, rows, cols), ``tissue``).
        heatmap: PNG heatmap over the thumbnail.
        geojson: GeoJSON of positive regions in level-0 pixels.
        error: the error message when the slide failed.
        resumed: True when results of an earlier run of the same slide and model were reused.
    """

    slide: str
    path: str
    status: str = "ok"
    label: Any = None
    prediction: int | None = None
    probability: float | None = None
    probabilities: list[float] = field(default_factory=list)
    logits: list[float] = field(default_factory=list)
    regions: int = 0
    tissue_regions: int = 0
    positive_regions: int = 0
    seconds: float = 0.0
    zarr: str | None = None
    heatmap: str | None = None
    geojson: str | None = None
    error: str | None = None
    resumed: bool = False

    @property
    def ok(self) -> bool:
        """True when the slide was predicted."""
        return self.status == "ok"

    def csv_row(self) -> dict[str, Any]:
        """The row of this slide in the prediction CSV (:data:`CSV_FIELDS`)."""
        row = {k: v for k, v in asdict(self).items() if k in CSV_FIELDS}
        row["probabilities"] = " ".join(f"{p:.6g}" for p in self.probabilities)
        if self.probability is not None:
            row["probability"] = f"{self.probability:.6g}"
        row["seconds"] = f"{self.seconds:.3f}"
        return {k: ("" if row.get(k) is None else row[k]) for k in CSV_FIELDS}

    def summarize(self, probs: np.ndarray, logits: Tensor, positive: int, threshold: float):
        """Fill the slide-level fields; return the positive class's region map (NaN off tissue).

        Args:
            probs: (C, rows, cols) region probabilities.
            logits: slide logits.
            positive: index of the positive class.
            threshold: positive probability from which a region counts as positive.
        """
        logits = logits.float()
        slide_probs = torch.sigmoid(logits) if logits.numel() == 1 else torch.softmax(logits, -1)
        self.logits = [float(v) for v in logits]
        self.probabilities = [float(p) for p in slide_probs]
        if slide_probs.numel() == 1:
            self.prediction = int(slide_probs[0] >= 0.5)
        else:
            self.prediction = int(slide_probs.argmax())
        pos_map = probs[min(positive, probs.shape[0] - 1)]  # (rows, cols)
        self.probability = float(slide_probs[min(positive, slide_probs.numel() - 1)])
        self.regions = int(pos_map.size)
        self.tissue_regions = int(np.isfinite(pos_map).sum())
        self.positive_regions = int((np.nan_to_num(pos_map, nan=-1.0) >= threshold).sum())
        return pos_map


def write_heatmap(
    path: Path, pos_map: np.ndarray, tissue: TissueMask, source: SlideSource, region_size: int
) -> None:
    """Positive probability over the thumbnail (each thumbnail pixel looks up its region)."""
    th, tw = tissue.thumbnail.shape[:2]
    step = region_size * source.scale  # level-0 px per region
    ys = ((np.arange(th) + 0.5) * tissue.downsample[0] / step).astype(np.int64)
    xs = ((np.arange(tw) + 0.5) * tissue.downsample[1] / step).astype(np.int64)
    ys = ys.clip(0, pos_map.shape[0] - 1)
    xs = xs.clip(0, pos_map.shape[1] - 1)
    save_heatmap_png(pos_map[ys][:, xs], path, background=tissue.thumbnail)


def write_region_geojson(
    path: Path,
    probs: np.ndarray,
    fractions: np.ndarray,
    source: SlideSource,
    region_size: int,
    names: list[str],
    positive: int,
    threshold: float,
    regions: str = "positive",
) -> None:
    """Regions as level-0 QuPath tiles (see the module docs); ``regions``: positive / tissue."""
    if regions not in GEOJSON_REGIONS:
        raise ValueError(f"geojson must be one of {list(GEOJSON_REGIONS)}, got {regions!r}")
    step = region_size * source.scale  # level-0 px per region
    h0, w0 = source.level0_shape
    pos = np.nan_to_num(probs[min(positive, probs.shape[0] - 1)], nan=-1.0)
    keep = pos >= threshold if regions == "positive" else np.isfinite(probs).all(axis=0)
    boxes, classes, measures = [], [], []
    for r, c in zip(*np.nonzero(keep), strict=True):
        r, c = int(r), int(c)
        x0, y0 = round(c * step, 2), round(r * step, 2)
        boxes.append((x0, y0, round(min((c + 1) * step, w0), 2), round(min((r + 1) * step, h0), 2)))
        classes.append(names[min(positive, len(names) - 1)] if pos[r, c] >= threshold else None)
        measure = {f"prob_{n}": round(float(probs[k, r, c]), 4) for k, n in enumerate(names)}
        measures.append({**measure, "tissue": round(float(fractions[r, c]), 4), "row": r, "col": c})
    meta = {"coordinates": "level-0 pixels", "regions": regions, "threshold": str(threshold)}
    write_qupath_geojson(path, boxes, "tile", classes, measures, metadata=meta)


def write_slide_files(
    stem: Path,
    probs: np.ndarray,
    fractions: np.ndarray,
    tissue: Callable[[], TissueMask],
    source: SlideSource,
    region_size: int,
    names: list[str],
    positive: int,
    threshold: float,
    regions: str = "positive",
    reuse: bool = False,
) -> tuple[str, str]:
    """``<stem>_heatmap.png`` and ``<stem>.geojson`` (kept as they are when ``reuse`` and present).

    ``tissue`` gives the tissue mask (its thumbnail is the heatmap's background); it is called
    only when the files are written.
    """
    heatmap, geojson = Path(f"{stem}_heatmap.png"), Path(f"{stem}.geojson")
    if not (reuse and heatmap.is_file() and geojson.is_file()):
        pos_map = probs[min(positive, probs.shape[0] - 1)]
        write_heatmap(heatmap, pos_map, tissue(), source, region_size)
        write_region_geojson(geojson, probs, fractions, source, region_size, names, positive,
                             threshold, regions)  # fmt: skip
    return str(heatmap), str(geojson)


def write_slide_attrs(
    group: Any,
    fractions: np.ndarray,
    logits: Tensor,
    source: SlideSource,
    region_size: int,
    names: list[str],
    probs: np.ndarray | None = None,
) -> None:
    """Tissue fractions, the geometry readers of a slide's Zarr need, and its OME-Zarr ``map``."""
    if "tissue" in group:
        del group["tissue"]
    group.create_array("tissue", data=fractions.astype(np.float32))
    if probs is not None:  # the map in microns for napari / ome-zarr readers
        write_ome_zarr_map(group, "map", probs, source.mpp, region_size, names)
    group.attrs["xt_plugins"] = {
        "complete": True,
        "logits": [float(v) for v in logits],
        "slide": source.path,
        "region_size": region_size,
        "scale": source.scale,
        "mpp": source.mpp,
        "level0_shape": list(source.level0_shape),
        "class_names": names,
    }


def class_names(names: list[str] | None, n: int) -> list[str]:
    """The class names of an ``n``-class model (``normal`` / ``tumor`` for two by default)."""
    if names is not None:
        return list(names)
    if n == 2:
        return ["normal", "tumor"]
    return [f"class_{k}" for k in range(n)]


def slide_item(slide: Any) -> InputItem:
    """The input item of a slide path, a :class:`~xt_plugins.io.SlideSource` or a dict item."""
    label = None
    if isinstance(slide, Mapping):
        slide, label = slide.get("image"), slide.get("label")
    if isinstance(label, Tensor):
        label = label.item()
    if isinstance(slide, SlideSource):
        return InputItem(Path(slide.path), label=label, extra={"source": slide})
    return InputItem(Path(os.fspath(slide)), label=label)
