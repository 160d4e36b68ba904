"""Slide outputs in the field's formats: QuPath tiles, OME-Zarr map in microns; precision, TTA."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from xt_plugins.cli import main
from xt_plugins.monai import WholeSlideInferer

from .conftest import MPP, REGION, THUMB, tiny_xtnet

SCHEMA = Path(__file__).parents[1] / "io" / "qupath_geojson.schema.json"


def _conforms(collection: dict) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    jsonschema.validate(collection, schema, cls=jsonschema.Draft202012Validator)


def _inferer(out, **kw) -> WholeSlideInferer:
    return WholeSlideInferer(out, mpp=MPP, thumbnail_size=THUMB, progress=False, **kw)


def test_ome_zarr_map_in_microns_beside_probs_and_resume(tmp_path, slides):
    ome_io = pytest.importorskip("ome_zarr.io")
    ome_reader = pytest.importorskip("ome_zarr.reader")
    _, infos = slides
    net = tiny_xtnet()
    pred = _inferer(tmp_path).predict_slide(str(infos[1].path), net)
    store = Path(pred.zarr)
    group = zarr.open_group(str(store), mode="r")
    probs = group["probs"][:]
    assert {"probs", "tissue", "map"} <= set(group.keys())
    node = next(iter(ome_reader.Reader(ome_io.parse_url(str(store / "map")))()))
    np.testing.assert_array_equal(np.asarray(node.data[0]), probs)
    scale = next(t["scale"] for t in node.metadata["coordinateTransformations"][0]
                 if t["type"] == "scale")  # fmt: skip
    assert scale == [1.0, REGION * MPP, REGION * MPP]  # 64-px regions at 1 um/px
    assert [a.get("unit") for a in node.metadata["axes"]] == [None, "micrometer", "micrometer"]
    assert node.metadata["channel_names"] == ["normal", "tumor"]
    # resume still answers from the store; a store without the map gets one
    again = _inferer(tmp_path).predict_slide(str(infos[1].path), net)
    assert again.resumed and again.logits == pred.logits
    del zarr.open_group(str(store), mode="r+")["map"]
    third = _inferer(tmp_path).predict_slide(str(infos[1].path), net)
    assert third.resumed and "map" in zarr.open_group(str(store), mode="r")


def test_geojson_is_qupath_tiles_of_positive_or_all_tissue_regions(tmp_path, slides):
    gpd = pytest.importorskip("geopandas")
    _, infos = slides
    net = tiny_xtnet()
    pos = _inferer(tmp_path / "pos", threshold=0.5).predict_slide(str(infos[1].path), net)
    tissue = _inferer(tmp_path / "all", threshold=0.5, geojson="tissue").predict_slide(
        str(infos[1].path), net
    )
    for pred, n in ((pos, pos.positive_regions), (tissue, tissue.tissue_regions)):
        gj = json.loads(Path(pred.geojson).read_text())
        _conforms(gj)
        assert len(gj["features"]) == n and "crs" not in gj  # level-0 pixels
        gdf = gpd.read_file(pred.geojson)
        assert len(gdf) == n
        if n:
            assert gdf.total_bounds[2] <= 2000 and gdf.total_bounds[3] <= 1500
    feats = json.loads(Path(tissue.geojson).read_text())["features"]
    classes = {f["properties"].get("classification", {}).get("name") for f in feats}
    positive = [f for f in feats if f["properties"]["measurements"]["prob_tumor"] >= 0.5]
    assert len(positive) == pos.positive_regions
    assert classes <= {"tumor", None}
    assert all(f["properties"]["objectType"] == "tile" for f in feats)
    assert {"prob_normal", "prob_tumor", "tissue", "row", "col"} <= set(
        feats[0]["properties"]["measurements"]
    )


def test_predict_slide_precision_and_tta_options(tmp_path, slides, capsys):
    _, infos = slides
    ckpt_args = ["--model", "xt_convnext_tiny_mamba", "--region-size", str(REGION)]
    kw = json.dumps({"dims": [24, 48, 96, 192], "depths": [1, 1, 1, 1],
                     "context_kwargs": {"depth": 1, "d_state": 8}})  # fmt: skip
    base = ["predict-slide", str(infos[1].path), *ckpt_args, "--model-kwargs", kw, "--mpp",
            str(MPP), "--thumbnail-size", str(THUMB), "--no-progress"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    assert main([*base, "--out", str(tmp_path / "b"), "--precision", "bf16", "--tta", "flips"]) == 0
    rows = {}
    for name in ("a", "b"):
        text = (tmp_path / name / "predictions.csv").read_text().splitlines()
        header, row = text[0].split(","), text[1].split(",")
        rows[name] = float(row[header.index("probability")])
        stem = infos[1].path.stem
        run = zarr.open_group(str(tmp_path / name / f"{stem}.zarr"), mode="r").attrs
        settings = run["xt_plugins_run"]["identity"]["settings"]
        assert (settings["precision"], settings["tta"]) == (
            ("32", None) if name == "a" else ("bf16", "flips")
        )
    assert abs(rows["a"] - rows["b"]) < 0.05
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "c"), "--precision", "16"]) == 1
    err = capsys.readouterr().err
    assert "needs a CUDA device" in err and len(err.strip().splitlines()) <= 2
