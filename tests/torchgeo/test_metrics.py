"""xView3 metric on hand-made cases: matching, each component, aggregate, torchmetrics wrapper."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from xt_plugins.torchgeo.metrics import (
    XView3Counts,
    XView3Metric,
    match_detections,
    xview3_counts,
    xview3_score,
)


def _table(xs, ys, **cols):
    n = len(xs)
    out = {"detect_x": np.asarray(xs, float), "detect_y": np.asarray(ys, float)}
    for k, v in cols.items():
        out[k] = np.asarray(v, float) if v is not None else np.full(n, np.nan)
    return out


def test_match_is_optimal_not_greedy():
    # greedy nearest-first would pair p0-g0 (10 m) and leave p1 unmatched (g1 is 250 m away);
    # the Hungarian matching pairs p0-g1 (150 m) and p1-g0 (190 m): two true positives
    pred = np.array([[0.0, 0.0], [200.0, 0.0]])
    gt = np.array([[10.0, 0.0], [-150.0, 0.0]])
    pi, gi = match_detections(pred, gt, 200.0)
    assert pi.tolist() == [0, 1] and gi.tolist() == [1, 0]


def test_match_respects_distance_and_boundary():
    pred = np.array([[0.0, 0.0], [1000.0, 0.0]])
    gt = np.array([[0.0, 200.0], [1000.0, 200.01]])
    pi, gi = match_detections(pred, gt, 200.0)
    assert pi.tolist() == [0] and gi.tolist() == [0]  # 200 m counts, 200.01 m does not
    empty = match_detections(np.zeros((0, 2)), gt)
    assert [len(a) for a in empty] == [0, 0]


def test_match_minimises_total_distance_among_maximal():
    pred = np.array([[0.0, 0.0], [50.0, 0.0]])
    gt = np.array([[45.0, 0.0], [5.0, 0.0]])
    pi, gi = match_detections(pred, gt)
    assert list(zip(pi.tolist(), gi.tolist(), strict=True)) == [(0, 1), (1, 0)]


def test_components_on_a_hand_made_scene():
    # 4 objects: g0 vessel fishing 50 m near shore; g1 vessel 100 m; g2 platform; g3 missed.
    gt = _table(
        [0, 1000, 2000, 3000],
        [0, 0, 0, 0],
        is_vessel=[1, 1, 0, 1],
        is_fishing=[1, 0, np.nan, 0],
        vessel_length_m=[50, 100, np.nan, 80],
        distance_from_shore_km=[1.0, 5.0, 1.5, 0.5],
    )
    # 4 predictions: p0 -> g0 (fishing right, length 60), p1 -> g1 (called fishing, 150 m),
    # p2 -> g2 (called vessel), p3 false alarm near nothing.
    pred = _table(
        [30, 1100, 2000, 9000],
        [0, 50, 150, 0],
        is_vessel=[1, 1, 1, 1],
        is_fishing=[1, 1, 0, 0],
        vessel_length_m=[60, 150, 30, 40],
    )
    c = xview3_counts(pred, gt)
    assert (c.det_tp, c.det_fp, c.det_fn) == (3, 1, 1)
    # close to shore: g0, g2 matched, g3 missed; p3 has no shore distance -> not counted
    assert (c.shore_tp, c.shore_fp, c.shore_fn) == (2, 0, 1)
    # vessel class over matched pairs: g0 v/v, g1 v/v, g2 non-vessel called vessel
    assert (c.vessel_tp, c.vessel_fp, c.vessel_fn) == (2, 1, 0)
    # fishing over matched vessels: g0 f/f tp, g1 non-fishing called fishing fp
    assert (c.fishing_tp, c.fishing_fp, c.fishing_fn) == (1, 1, 0)
    # lengths of matched vessels: |60-50|/50 = 0.2, |150-100|/100 = 0.5
    assert c.length_count == 2 and c.length_error == pytest.approx(0.7)
    s = c.scores()
    f1_det = 2 * 3 / (2 * 3 + 1 + 1)
    expected = dict(
        f1_det=f1_det,
        f1_shore=2 * 2 / (4 + 0 + 1),
        f1_vessel=2 * 2 / (4 + 1),
        f1_fishing=2 / (2 + 1),
        length_acc=1 - 0.35,
    )
    for k, v in expected.items():
        assert s[k] == pytest.approx(v), k
    agg = f1_det * (1 + 0.65 + 0.8 + 2 / 3 + 0.8) / 5
    assert s["aggregate"] == pytest.approx(agg)
    assert xview3_score(pred, gt) == pytest.approx(s)
    # DataFrames work the same
    assert xview3_score(pd.DataFrame(pred), pd.DataFrame(gt)) == pytest.approx(s)


def test_shore_false_positive_needs_a_known_distance():
    gt = _table([0], [0], is_vessel=[1], distance_from_shore_km=[1.0])
    pred = _table(
        [0, 5000, 9000], [0, 0, 0], is_vessel=[1, 1, 1], distance_from_shore_km=[np.nan, 1.9, 3.0]
    )
    c = xview3_counts(pred, gt)
    assert (c.shore_tp, c.shore_fp, c.shore_fn) == (1, 1, 0)  # only the 1.9 km one counts


def test_length_error_is_capped_and_perfect_scene_scores_one():
    gt = _table([0], [0], is_vessel=[1], is_fishing=[0], vessel_length_m=[10])
    pred = _table([0], [0], is_vessel=[1], is_fishing=[0], vessel_length_m=[100])  # 900 % off
    assert xview3_score(pred, gt)["length_acc"] == 0.0
    pred["vessel_length_m"] = np.array([10.0])
    assert xview3_score(pred, gt)["aggregate"] == 1.0
    assert xview3_score(_table([], []), _table([], []))["aggregate"] == 1.0  # nothing to find
    nothing = xview3_score(_table([], []), gt)
    assert nothing["f1_det"] == 0.0 and nothing["aggregate"] == 0.0


def test_xview3_example_value():
    gt = _table(
        [0], [0], is_vessel=[1], is_fishing=[0], vessel_length_m=[100], distance_from_shore_km=[5.0]
    )
    pred = _table([50], [0], is_vessel=[1], is_fishing=[0], vessel_length_m=[80])
    assert xview3_score(pred, gt)["aggregate"] == pytest.approx((1 + 0.8 + 1 + 1 + 1) / 5)


def test_missing_coordinates_is_a_clear_error():
    with pytest.raises(KeyError, match="detect_x"):
        xview3_counts({"x": [0.0]}, _table([0], [0]))


def test_torchmetric_sums_counts_over_updates_and_resets():
    g1 = _table([0, 500], [0, 0], is_vessel=[1, 1], is_fishing=[0, 0], vessel_length_m=[50, 50])
    p1 = _table([10], [0], is_vessel=[1], is_fishing=[0], vessel_length_m=[40])
    g2 = _table([0], [0], is_vessel=[0], distance_from_shore_km=[0.1])
    p2 = {k: torch.as_tensor(v) for k, v in _table([0, 900], [0, 0], is_vessel=[0, 1]).items()}
    metric = XView3Metric()
    metric.update([p1], [g1])
    metric.update([p2], [g2])
    expected = (
        xview3_counts(p1, g1) + xview3_counts({k: v.numpy() for k, v in p2.items()}, g2)
    ).scores()
    got = {k: float(v) for k, v in metric.compute().items()}
    assert got == pytest.approx(expected)
    assert got["f1_det"] == pytest.approx(2 * 2 / (4 + 1 + 1))
    metric.reset()
    assert metric.counts() == XView3Counts()
    assert math.isclose(float(metric.compute()["aggregate"]), 1.0)
