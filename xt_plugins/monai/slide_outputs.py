"""Whole-slide outputs: the slide prediction record, its CSV row, heatmap and GeoJSON.

.. versionadded:: 0.2
   Split out of ``xt_plugins.monai.inferers``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..infer.runner import InputItem
from ..io import SlideSource, boxes_to_geojson, save_heatmap_png
from ..io.masks import TissueMask

__all__ = [
    "CSV_FIELDS",
    "SlidePrediction",
    "class_names",
    "slide_item",
    "write_heatmap",
    "write_region_geojson",
    "write_slide_attrs",
]

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
    pos_map: np.ndarray,
    fractions: np.ndarray,
    source: SlideSource,
    region_size: int,
    name: str,
    threshold: float,
) -> None:
    """Positive regions as level-0 rectangles (QuPath annotations of class ``name``)."""
    step = region_size * source.scale
    h0, w0 = source.level0_shape
    rows, cols = np.nonzero(np.nan_to_num(pos_map, nan=-1.0) >= threshold)
    boxes, props = [], []
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
        x0, y0 = round(c * step, 2), round(r * step, 2)
        boxes.append((x0, y0, round(min((c + 1) * step, w0), 2), round(min((r + 1) * step, h0), 2)))
        props.append(
            {
                "class_name": name,
                "probability": round(float(pos_map[r, c]), 4),
                "tissue": round(float(fractions[r, c]), 4),
                "row": r,
                "col": c,
            }
        )
    boxes_to_geojson(boxes, props, path=path)


def write_slide_attrs(
    group: Any,
    fractions: np.ndarray,
    logits: Tensor,
    source: SlideSource,
    region_size: int,
    names: list[str],
) -> None:
    """Tissue fractions and the geometry that readers of a slide's Zarr need."""
    if "tissue" in group:
        del group["tissue"]
    group.create_array("tissue", data=fractions.astype(np.float32))
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
