"""xView3: training targets of a scene window, and the scoring of point detections.

**Targets** (:func:`detection_targets`, :func:`classification_label`,
:func:`segmentation_mask`) are made from a window's label rows (``detections.csv`` of a
:class:`~xt_plugins.io.scene.SARScene`):

- ``detection``: ``heatmap`` (1, h, w) Gaussian centres at ``target_stride``, and ``vessel``,
  ``fishing``, ``length`` (metres), ``shore`` (km) (h, w) maps holding each object's value at
  its centre cell and -1 elsewhere (and where unknown);
- ``classification``: ``label`` 1 when the window contains a vessel centre, else 0;
- ``segmentation``: ``mask`` (H, W): 0 background, 1 vessel, 2 other object (platform), as
  disks sized from the vessel length.

**Scoring**: Hungarian matching within 200 m and the aggregate score. The xView3 aggregate
over a set of scenes is

    aggregate = F1_det * (1 + length_acc + F1_vessel + F1_fishing + F1_shore) / 5

- **F1_det**: predictions are matched one-to-one to ground-truth objects by minimum total
  distance (Hungarian, :func:`scipy.optimize.linear_sum_assignment`) among pairs closer than
  ``match_distance`` (200 m); matched pairs are true positives, unmatched predictions false
  positives, unmatched objects false negatives.
- **F1_shore**: the same detection F1 restricted to objects close to shore
  (``distance_from_shore_km <= 2``): matched close-to-shore objects are true positives,
  unmatched ones false negatives, and unmatched predictions are false positives when their
  own ``distance_from_shore_km`` is known and close to shore (a prediction without a known
  distance cannot be placed, so it is not counted against F1_shore; a matched prediction
  takes the distance of its object).
- **F1_vessel**: over matched pairs whose object has a known ``is_vessel``, F1 of the
  vessel class (vessel = positive).
- **F1_fishing**: over matched pairs whose object is a vessel with a known ``is_fishing``,
  F1 of the fishing class.
- **length_acc**: ``1 - min(1, mean(|pred - gt| / gt))`` over matched vessels with a known
  length (and a predicted one).

Counts are summed over scenes before the ratios are taken (as xView3 does). A component with
nothing to score (0 / 0) is 1.0: no errors were made, so an empty scene with no predictions
scores 1.

Detections are tables (a pandas DataFrame or a mapping of equal-length arrays) with xView3's
columns: ``detect_x``, ``detect_y`` (map coordinates in metres; or pixel coordinates scaled by
the pixel size), ``is_vessel``, ``is_fishing``, ``vessel_length_m`` and, for ground truth,
``distance_from_shore_km``. Missing values are NaN (booleans may be floats with NaN).

.. versionadded:: 0.2
   Moved here from ``xt_plugins.torchgeo.metrics`` (scoring) and
   ``xt_plugins.torchgeo.datamodules`` (targets), still importable there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from ..nn.heads import gaussian_heatmap

__all__ = [
    "MATCH_DISTANCE_M",
    "SHORE_DISTANCE_KM",
    "XView3Counts",
    "classification_label",
    "detection_targets",
    "match_detections",
    "segmentation_mask",
    "xview3_counts",
    "xview3_score",
]

#: Largest distance (metres) between a prediction and the object it detects.
MATCH_DISTANCE_M = 200.0
#: Objects at most this far from shore (km) count as close to shore.
SHORE_DISTANCE_KM = 2.0

Detections = Mapping[str, Any]


def match_detections(
    pred_xy: np.ndarray, gt_xy: np.ndarray, max_distance: float = MATCH_DISTANCE_M
) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of predictions to objects within ``max_distance`` (Hungarian).

    Among all matchings that use only pairs closer than ``max_distance``, returns one with the
    most pairs and, among those, the smallest total distance.

    Args:
        pred_xy: (P, 2) prediction coordinates.
        gt_xy: (G, 2) object coordinates (same units as ``max_distance``).
        max_distance: largest distance of a matched pair (inclusive).

    Returns:
        ``(pred_index, gt_index)``: int arrays of the matched pairs, sorted by ``pred_index``.
    """
    pred_xy = np.asarray(pred_xy, dtype=np.float64).reshape(-1, 2)
    gt_xy = np.asarray(gt_xy, dtype=np.float64).reshape(-1, 2)
    empty = np.zeros(0, dtype=np.int64)
    if len(pred_xy) == 0 or len(gt_xy) == 0:
        return empty, empty
    dist = np.linalg.norm(pred_xy[:, None, :] - gt_xy[None, :, :], axis=-1)  # (P, G)
    ok = dist <= max_distance
    if not ok.any():
        return empty, empty
    # A forbidden pair costs more than every allowed pair together, so the assignment first
    # maximises the number of allowed pairs, then minimises their total distance.
    forbidden = (max_distance + 1.0) * (min(dist.shape) + 1)
    rows, cols = linear_sum_assignment(np.where(ok, dist, forbidden))
    keep = ok[rows, cols]
    order = np.argsort(rows[keep], kind="stable")
    return rows[keep][order].astype(np.int64), cols[keep][order].astype(np.int64)


def _f1(tp: float, fp: float, fn: float) -> float:
    denom = 2 * tp + fp + fn
    return 1.0 if denom == 0 else 2 * tp / denom


@dataclass
class XView3Counts:
    """Summable counts behind the xView3 score (add the counts of several scenes with ``+``).

    Attributes:
        det_tp: matched pairs.
        det_fp: unmatched predictions.
        det_fn: unmatched objects.
        shore_tp: matched close-to-shore objects.
        shore_fp: unmatched predictions known to be close to shore.
        shore_fn: unmatched close-to-shore objects.
        vessel_tp: matched pairs, both vessel.
        vessel_fp: predicted vessel, object not a vessel.
        vessel_fn: predicted non-vessel, object a vessel.
        fishing_tp: matched vessels, both fishing.
        fishing_fp: predicted fishing, vessel not fishing.
        fishing_fn: predicted non-fishing, vessel fishing.
        length_error: sum of ``|pred - gt| / gt`` over matched vessels with lengths.
        length_count: number of terms in ``length_error``.
    """

    det_tp: float = 0.0
    det_fp: float = 0.0
    det_fn: float = 0.0
    shore_tp: float = 0.0
    shore_fp: float = 0.0
    shore_fn: float = 0.0
    vessel_tp: float = 0.0
    vessel_fp: float = 0.0
    vessel_fn: float = 0.0
    fishing_tp: float = 0.0
    fishing_fp: float = 0.0
    fishing_fn: float = 0.0
    length_error: float = 0.0
    length_count: float = 0.0

    def __add__(self, other: XView3Counts) -> XView3Counts:
        return XView3Counts(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )

    def as_dict(self) -> dict[str, float]:
        """The counts as a plain dict."""
        return asdict(self)

    def scores(self) -> dict[str, float]:
        """The xView3 components and aggregate.

        Returns:
            ``{"f1_det", "f1_shore", "f1_vessel", "f1_fishing", "length_acc", "aggregate"}``.
        """
        f1_det = _f1(self.det_tp, self.det_fp, self.det_fn)
        f1_shore = _f1(self.shore_tp, self.shore_fp, self.shore_fn)
        f1_vessel = _f1(self.vessel_tp, self.vessel_fp, self.vessel_fn)
        f1_fishing = _f1(self.fishing_tp, self.fishing_fp, self.fishing_fn)
        length_acc = (
            1.0 if self.length_count == 0 else 1.0 - min(1.0, self.length_error / self.length_count)
        )
        aggregate = f1_det * (1.0 + length_acc + f1_vessel + f1_fishing + f1_shore) / 5.0
        return {
            "f1_det": f1_det,
            "f1_shore": f1_shore,
            "f1_vessel": f1_vessel,
            "f1_fishing": f1_fishing,
            "length_acc": length_acc,
            "aggregate": aggregate,
        }


def _column(table: Detections, name: str, n: int) -> np.ndarray:
    """Float column ``name`` of ``table`` (NaN when absent)."""
    if name not in table:
        return np.full(n, np.nan)
    values = table[name]
    values = values.to_numpy() if hasattr(values, "to_numpy") else np.asarray(values)
    out = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(out) != n:
        raise ValueError(f"column {name!r} has {len(out)} values for {n} detections")
    return out


def _xy(table: Detections, what: str) -> np.ndarray:
    for key in ("detect_x", "detect_y"):
        if key not in table:
            raise KeyError(f"{what} detections need a {key!r} column (map units, metres)")
    x = table["detect_x"]
    x = x.to_numpy() if hasattr(x, "to_numpy") else np.asarray(x)
    n = len(np.asarray(x).reshape(-1))
    return np.stack([_column(table, "detect_x", n), _column(table, "detect_y", n)], axis=1)


def xview3_counts(
    pred: Detections,
    gt: Detections,
    *,
    match_distance: float = MATCH_DISTANCE_M,
    shore_distance_km: float = SHORE_DISTANCE_KM,
) -> XView3Counts:
    """Counts of one scene (see the module docs for the rules).

    Args:
        pred: predicted detections (``detect_x``, ``detect_y``, ``is_vessel``, ``is_fishing``,
            ``vessel_length_m``, optional ``distance_from_shore_km``).
        gt: ground truth with the same columns and ``distance_from_shore_km``.
        match_distance: largest distance of a match (metres).
        shore_distance_km: close-to-shore threshold (km).

    Returns:
        The scene's :class:`XView3Counts`.
    """
    p_xy, g_xy = _xy(pred, "predicted"), _xy(gt, "ground-truth")
    n_p, n_g = len(p_xy), len(g_xy)
    pi, gi = match_detections(p_xy, g_xy, match_distance)
    c = XView3Counts(det_tp=len(pi), det_fp=n_p - len(pi), det_fn=n_g - len(gi))

    g_shore = _column(gt, "distance_from_shore_km", n_g)
    g_close = g_shore <= shore_distance_km  # NaN -> False
    p_shore = _column(pred, "distance_from_shore_km", n_p)
    p_unmatched = np.ones(n_p, dtype=bool)
    p_unmatched[pi] = False
    c.shore_tp = float(g_close[gi].sum())
    c.shore_fn = float(g_close.sum() - g_close[gi].sum())
    c.shore_fp = float((p_unmatched & (p_shore <= shore_distance_km)).sum())

    g_vessel, p_vessel = _column(gt, "is_vessel", n_g)[gi], _column(pred, "is_vessel", n_p)[pi]
    known = ~np.isnan(g_vessel)
    gv, pv = g_vessel[known] > 0.5, np.nan_to_num(p_vessel[known]) > 0.5
    c.vessel_tp, c.vessel_fp, c.vessel_fn = (
        float((gv & pv).sum()),
        float((~gv & pv).sum()),
        float((gv & ~pv).sum()),
    )

    g_fish, p_fish = _column(gt, "is_fishing", n_g)[gi], _column(pred, "is_fishing", n_p)[pi]
    known = (g_vessel > 0.5) & ~np.isnan(g_fish)
    gf, pf = g_fish[known] > 0.5, np.nan_to_num(p_fish[known]) > 0.5
    c.fishing_tp, c.fishing_fp, c.fishing_fn = (
        float((gf & pf).sum()),
        float((~gf & pf).sum()),
        float((gf & ~pf).sum()),
    )

    g_len = _column(gt, "vessel_length_m", n_g)[gi]
    p_len = _column(pred, "vessel_length_m", n_p)[pi]
    known = (g_vessel > 0.5) & (g_len > 0) & np.isfinite(p_len)
    c.length_error = float((np.abs(p_len[known] - g_len[known]) / g_len[known]).sum())
    c.length_count = float(known.sum())
    return c


def xview3_score(
    pred: Detections,
    gt: Detections,
    *,
    match_distance: float = MATCH_DISTANCE_M,
    shore_distance_km: float = SHORE_DISTANCE_KM,
) -> dict[str, float]:
    """The xView3 components and aggregate of one scene.

    Args:
        pred: predicted detections (see :func:`xview3_counts`).
        gt: ground-truth detections.
        match_distance: largest distance of a match (metres).
        shore_distance_km: close-to-shore threshold (km).

    Returns:
        ``{"f1_det", "f1_shore", "f1_vessel", "f1_fishing", "length_acc", "aggregate"}``.

    Example:
        >>> gt = {"detect_x": [0.0], "detect_y": [0.0], "is_vessel": [1], "is_fishing": [0],
        ...       "vessel_length_m": [100.0], "distance_from_shore_km": [5.0]}
        >>> pred = {"detect_x": [50.0], "detect_y": [0.0], "is_vessel": [1], "is_fishing": [0],
        ...         "vessel_length_m": [80.0]}
        >>> round(xview3_score(pred, gt)["aggregate"], 3)
        0.96
    """
    counts = xview3_counts(
        pred, gt, match_distance=match_distance, shore_distance_km=shore_distance_km
    )
    return counts.scores()


# ---------------------------------------------------------------------------- targets
def detection_targets(
    objects: pd.DataFrame, y: int, x: int, h: int, w: int, stride: int, sigma: float = 1.5
) -> dict[str, np.ndarray]:
    """xView3 point targets of a window at ``stride`` (see the module docs).

    Args:
        objects: label rows (scene pixel positions and attributes,
            :data:`~xt_plugins.io.scene.LABEL_COLUMNS`).
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
