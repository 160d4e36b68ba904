"""WholeSlideInferer: Zarr region map, PNG heatmap, GeoJSON, CSV, resume and bad slides."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

from xt_plugins.monai import WholeSlideInferer, read_slide_data

from .conftest import MPP, REGION, THUMB, fixture_file, tiny_xtnet


def make_inferer(out, **kwargs) -> WholeSlideInferer:
    kwargs = {"mpp": MPP, "thumbnail_size": THUMB, "progress": False, **kwargs}
    return WholeSlideInferer(out, **kwargs)


def test_outputs_of_one_slide_read_back(tmp_path, slides):
    folder, infos = slides
    info = infos[1]
    net = tiny_xtnet()
    inferer = make_inferer(tmp_path, threshold=0.0)  # every tissue region is "positive"
    pred = inferer.predict_slide({"image": str(info.path), "label": 1}, net)
    assert pred.ok and pred.label == 1 and pred.prediction in (0, 1)
    assert sum(pred.probabilities) == pytest.approx(1.0)
    assert pred.regions == 12 * 16 and 0 < pred.tissue_regions < pred.regions
    # Zarr: probabilities per region, NaN off tissue, tissue fractions, geometry attributes
    group = zarr.open_group(str(tmp_path / f"{info.path.stem}.zarr"), mode="r")
    probs = group["probs"][:]
    assert probs.shape == (2, 12, 16)
    on = np.isfinite(probs[0])
    assert on.sum() == pred.tissue_regions
    np.testing.assert_allclose(probs[:, on].sum(axis=0), 1.0, rtol=1e-5)
    assert (group["tissue"][:][on] >= 0.1).all()
    attrs = group.attrs["xt_plugins"]
    assert attrs["scale"] == 2 and attrs["region_size"] == REGION and attrs["complete"]
    assert "tokens" not in group  # stream internals dropped once the slide is done
    # PNG: the slide thumbnail's size
    with Image.open(pred.heatmap) as png:
        assert png.size == (512, 384) and png.mode == "RGB"
    # GeoJSON: one rectangle per positive region, level-0 pixels (128 per region), QuPath props
    features = json.loads((tmp_path / f"{info.path.stem}.geojson").read_text())["features"]
    assert len(features) == pred.positive_regions == pred.tissue_regions
    for feature in features:
        props = feature["properties"]
        (ring,) = feature["geometry"]["coordinates"]
        xs, ys = [p[0] for p in ring], [p[1] for p in ring]
        m = props["measurements"]
        assert min(xs) == m["col"] * 128 and min(ys) == m["row"] * 128
        assert max(xs) <= 2000 and max(ys) <= 1500
        # format change (issue 14): QuPath tiles with measurements (was: annotations with flat
        # probability / row / col properties)
        assert props["classification"]["name"] == "tumor" and props["objectType"] == "tile"
        m = props["measurements"]
        assert m["prob_tumor"] == pytest.approx(probs[1, m["row"], m["col"]], abs=1e-4)
    # MONAI Inferer call: slide logits
    logits = make_inferer(None)(str(info.path), net)
    torch.testing.assert_close(logits, torch.tensor([pred.logits]), rtol=1e-4, atol=1e-4)


def test_resume_skips_finished_slides_and_redoes_stale_ones(tmp_path, slides):
    folder, infos = slides
    net = tiny_xtnet()
    inferer = make_inferer(tmp_path)
    first = inferer.predict_slide(str(infos[0].path), net)
    (tmp_path / f"{infos[0].path.stem}_heatmap.png").unlink()  # rewritten from the Zarr
    again = inferer.predict_slide(str(infos[0].path), net)
    assert again.resumed and again.logits == first.logits
    assert (tmp_path / f"{infos[0].path.stem}_heatmap.png").is_file()
    other = tiny_xtnet(seed=1)  # other weights: the stored map is stale
    redone = inferer.predict_slide(str(infos[0].path), other)
    assert not redone.resumed and redone.logits != first.logits
    fresh = make_inferer(tmp_path, resume=False).predict_slide(str(infos[0].path), other)
    assert not fresh.resumed and fresh.logits == pytest.approx(redone.logits, abs=1e-5)


def test_bad_slides_get_one_clear_error_and_the_others_are_written(tmp_path, slides, bad_slides):
    folder, infos = slides
    good = read_slide_data(folder)[1]
    bad = {
        "unopenable": (fixture_file("unopenable.tiff"), "Unsupported TIFF compression"),
        "unreadable": (fixture_file("unreadable.svs"), "Bogus marker length"),
        "small": (fixture_file("small.svs"), "smaller than one 64-px region"),
        "dicom": (fixture_file("boxes_0.dcm"), "smaller than one 64-px region"),
        "no_mpp": (bad_slides["no_mpp"], "no microns-per-pixel.*--slide-mpp"),
        "blank": (bad_slides["blank"], "no tissue found"),
        "missing": (tmp_path / "missing.svs", "no such file"),
    }
    errors = []
    preds = make_inferer(tmp_path / "out").predict_slides(
        [str(p) for p, _ in bad.values()] + [good],
        tiny_xtnet(),
        on_error=errors.append,
    )
    assert [p.ok for p in preds] == [False] * len(bad) + [True]
    assert len(errors) == len(bad)
    for pred, (path, reason) in zip(preds, bad.values(), strict=False):
        assert pred.error.startswith(str(path)) and "\n" not in pred.error
        assert re.search(reason, pred.error), pred.error
    stem = infos[1].path.stem
    for name in (f"{stem}.zarr", f"{stem}_heatmap.png", f"{stem}.geojson"):
        assert (tmp_path / "out" / name).exists()
    with (tmp_path / "out" / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["error"] * len(bad) + ["ok"]
    assert rows[-1]["label"] == "1" and float(rows[-1]["probability"]) == pytest.approx(
        preds[-1].probability, abs=1e-5
    )
    assert "Bogus marker length" in rows[1]["error"]
