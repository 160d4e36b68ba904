"""predict-scene: safe checkpoints, tile-streamed GeoTIFFs equal to a whole-scene pass, outputs
in map coordinates, bad scenes skipped."""

import json
import math
import pickle
import shutil

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch
from affine import Affine

from xt_plugins.cli import main
from xt_plugins.torchgeo import XTClassification, XTSemanticSegmentation, XTVesselDetection
from xt_plugins.torchgeo.datamodules import SARScene
from xt_plugins.torchgeo.predict import (
    CheckpointError,
    load_checkpoint,
    predict_scene,
    task_from_checkpoint,
)

from .conftest import TINY_DETECTOR, TINY_SWIN


def _save(task, path):
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, path)
    return path


def test_unsafe_checkpoint_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {}, "hyper_parameters": {"x": Payload()}}, f)
    with pytest.raises(CheckpointError, match=r"weights_only=True\) refused.*never unpickles"):
        load_checkpoint(path)
    torch.save({"state_dict": {}}, tmp_path / "nohp.ckpt")
    with pytest.raises(CheckpointError, match="no 'hyper_parameters'"):
        load_checkpoint(tmp_path / "nohp.ckpt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.ckpt")


def test_cli_predicts_scenes_and_skips_a_bad_one(detection_checkpoint, sar_root, tmp_path, capsys):
    bad = tmp_path / "bad_scene"
    shutil.copytree(sar_root / "scene_000", bad)
    (bad / "VH_dB.tif").unlink()
    out = tmp_path / "pred"
    scenes = [sar_root / "scene_000", bad, sar_root / "scene_001"]
    rc = main(
        [
            "predict-scene",
            str(detection_checkpoint),
            *map(str, scenes),
            "--out",
            str(out),
            "--window-regions",
            "3",
            "--overlap-regions",
            "1",
            "--threshold",
            "0.005",
            "--no-progress",
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0
    assert "bad_scene: skipped:" in printed and "VH_dB.tif: missing VH file" in printed
    assert not (out / "bad_scene").exists() and not (out / "bad_scene.partial").exists()
    for name in ("scene_000", "scene_001"):
        scene = SARScene(sar_root / name)
        with rasterio.open(out / name / "probabilities.tif") as ds:
            assert ds.crs == scene.crs
            assert ds.transform == scene.transform @ Affine.scale(4)
            assert (ds.height, ds.width) == (math.ceil(500 / 4), math.ceil(600 / 4))
            assert ds.descriptions == ("centre", "vessel", "fishing", "length_m")
            probs = ds.read()
        valid, _ = scene.validity()
        finite = np.isfinite(probs[0])
        assert finite.mean() == pytest.approx(valid.mean(), abs=0.05)  # NaN on nodata
        assert (probs[:3][:, finite] >= 0).all() and (probs[:3][:, finite] <= 1).all()
        df = pd.read_csv(out / name / "detections.csv")
        assert {"detect_x", "detect_y", "detect_scene_row", "is_vessel", "score"} <= set(df)
        assert len(df) > 0 and (df.score >= 0.005).all()
        xs, ys = scene.pixel_to_map(df.detect_scene_row + 0.5, df.detect_scene_column + 0.5)
        assert np.abs(xs - df.detect_x).max() <= 10 and np.abs(ys - df.detect_y).max() <= 10
        gj = json.loads((out / name / "detections.geojson").read_text())
        assert gj["crs"]["properties"]["name"].endswith("32631")
        coords = np.array([f["geometry"]["coordinates"] for f in gj["features"]])
        assert np.allclose(coords, df[["detect_x", "detect_y"]].to_numpy())
    # every scene bad: non-zero exit
    rc = main(
        ["predict-scene", str(detection_checkpoint), str(bad), "--out", str(out), "--no-progress"]
    )
    assert rc == 1


def test_tiles_equal_a_whole_scene_pass(sar_root, tmp_path):
    """With per-region encoding (context none) the streamed map equals one forward pass."""
    torch.manual_seed(0)
    task = XTVesselDetection(**{**TINY_DETECTOR, "model": "xt_swinv2_tiny_none"})
    task = task_from_checkpoint(_save(task, tmp_path / "none.ckpt"), "cpu")
    res = predict_scene(
        task,
        sar_root / "scene_001",
        tmp_path / "out",
        window_regions=4,
        overlap_regions=1,
        batch=2,
        threshold=0.0,
        progress=False,
    )
    scene = SARScene(sar_root / "scene_001")
    image, valid = scene.read_with_mask(0, 0, 500, 600)
    with torch.no_grad():
        out = task(torch.from_numpy(image)[None])
    whole = out["heatmap"].sigmoid()[0, 0].numpy()  # (125, 150)
    with rasterio.open(res.probabilities) as ds:
        tiled = ds.read(1)
    # away from the scene's borders (32 px), where the whole-image pass zero-pads features and
    # the windows see the encoder's output on zero-padded pixels instead
    inner = (slice(8, 116), slice(8, 136))
    ok = np.isfinite(tiled[inner])
    assert ok.mean() > 0.5
    np.testing.assert_allclose(tiled[inner][ok], whole[inner][ok], atol=1e-5)
    # each object found once: the peaks of the whole map equal the streamed detections
    assert len(res.detections) > 0
    assert res.detections.duplicated(["detect_scene_row", "detect_scene_column"]).sum() == 0


def test_segmentation_checkpoint_writes_class_probabilities(sar_root, tmp_path):
    task = XTSemanticSegmentation(
        backbone="xt_swinv2_tiny_txl", num_classes=3, region_size=64, model_kwargs=TINY_SWIN
    )
    task = task_from_checkpoint(_save(task, tmp_path / "seg.ckpt"), "cpu")
    res = predict_scene(
        task, sar_root / "scene_000", tmp_path / "seg", window_regions=4, progress=False
    )
    scene = SARScene(sar_root / "scene_000")
    with rasterio.open(res.probabilities) as ds:
        assert (ds.count, ds.height, ds.width) == (3, 500, 600)
        assert ds.transform == scene.transform and ds.crs == scene.crs
        probs = ds.read()
    ok = np.isfinite(probs[0])
    assert np.array_equal(ok, scene.read_with_mask(0, 0, 500, 600)[1])
    np.testing.assert_allclose(probs[:, ok].sum(0), 1.0, atol=1e-4)
    assert not (tmp_path / "seg" / "detections.csv").exists()


def test_classification_checkpoint_writes_region_map(sar_root, tmp_path):
    task = XTClassification(model="xt_swinv2_tiny_mamba", region_size=64, model_kwargs=TINY_SWIN)
    task = task_from_checkpoint(_save(task, tmp_path / "cls.ckpt"), "cpu")
    res = predict_scene(task, sar_root / "scene_000", tmp_path / "cls", progress=False)
    scene = SARScene(sar_root / "scene_000")
    with rasterio.open(res.probabilities) as ds:
        assert (ds.count, ds.height, ds.width) == (1, 8, 10)  # ceil(500 / 64), ceil(600 / 64)
        assert ds.transform == scene.transform @ Affine.scale(64) and ds.crs == scene.crs
        probs = ds.read(1)
    assert np.nanmin(probs) >= 0 and np.nanmax(probs) <= 1
    assert (tmp_path / "cls" / "scene.csv").read_text().startswith("scene_id,class_0")


def _schema_check(collection):
    jsonschema = pytest.importorskip("jsonschema")
    from pathlib import Path

    schema = json.loads(
        (Path(__file__).parents[1] / "io" / "qupath_geojson.schema.json").read_text()
    )
    jsonschema.validate(collection, schema, cls=jsonschema.Draft202012Validator)


def test_outputs_are_cogs_uint8_on_request_and_blended(sar_root, tmp_path):
    from rio_cogeo.cogeo import cog_validate

    task = XTSemanticSegmentation(
        backbone="xt_swinv2_tiny_txl", num_classes=3, region_size=64, model_kwargs=TINY_SWIN
    )
    task = task_from_checkpoint(_save(task, tmp_path / "seg.ckpt"), "cpu")
    kw = dict(window_regions=4, progress=False)
    res = predict_scene(task, sar_root / "scene_000", tmp_path / "f32", **kw)
    valid, errors, _ = cog_validate(str(res.probabilities), quiet=True)
    assert valid and not errors
    with rasterio.open(res.probabilities) as ds:
        assert ds.overviews(1) == [2]  # 600 x 500 in 512-px tiles: one overview level
        full = ds.read()
        over = ds.read(1, out_shape=(250, 300))  # served from the overview
    assert np.nanmax(np.abs(over - np.nanmean(full[0].reshape(250, 2, 300, 2), (1, 3)))) < 1e-5
    q = predict_scene(task, sar_root / "scene_000", tmp_path / "u8", uint8=True, **kw)
    assert cog_validate(str(q.probabilities), quiet=True)[0]
    with rasterio.open(q.probabilities) as ds:
        assert ds.dtypes[0] == "uint8" and ds.nodata == 255
        back = ds.read(masked=True).astype(np.float32) * ds.scales[0]
    ok = np.isfinite(full)
    assert np.abs(back.filled(np.nan)[ok] - full[ok]).max() <= 1 / 508 + 1e-6
    b = predict_scene(task, sar_root / "scene_000", tmp_path / "blend", blend="cosine", **kw)
    with rasterio.open(b.probabilities) as ds:
        blended = ds.read()
    assert np.array_equal(np.isfinite(blended), ok)  # same nodata, different weights
    np.testing.assert_allclose(blended[:, ok[0]].sum(0), 1.0, atol=1e-4)


def test_detections_at_pixel_centres_as_qupath_geojson(sar_root, tmp_path):
    gpd = pytest.importorskip("geopandas")
    torch.manual_seed(0)
    task = XTVesselDetection(**{**TINY_DETECTOR, "model": "xt_swinv2_tiny_none"})
    task = task_from_checkpoint(_save(task, tmp_path / "det.ckpt"), "cpu")
    res = predict_scene(task, sar_root / "scene_001", tmp_path / "out", threshold=0.0,
                        progress=False)  # fmt: skip
    df, scene = res.detections, SARScene(sar_root / "scene_001")
    assert len(df) > 0 and set(df.position) == {"pixel_centre"}
    assert set(df.coordinates) == {scene.crs.to_string()}
    t = scene.transform  # the centre of pixel (row, col), exactly
    np.testing.assert_allclose(df.detect_x, t.c + t.a * (df.detect_scene_column + 0.5))
    np.testing.assert_allclose(df.detect_y, t.f + t.e * (df.detect_scene_row + 0.5))
    gj = json.loads((res.out_dir / "detections.geojson").read_text())
    _schema_check(gj)
    props = gj["features"][0]["properties"]
    assert props["objectType"] == "detection" and "score" in props["measurements"]
    assert props["classification"]["name"] in ("vessel", "fishing vessel", "non-vessel")
    assert gj["metadata"]["position"] == "pixel_centre"
    gdf = gpd.read_file(res.out_dir / "detections.geojson")
    assert len(gdf) == len(df) and gdf.crs.to_epsg() == 32631


def test_scene_without_crs_warns_once_and_uses_pixel_coordinates(sar_root, tmp_path, caplog):
    scene_dir = tmp_path / "nocrs"
    scene_dir.mkdir()
    for src in (sar_root / "scene_001").iterdir():
        if src.suffix != ".tif":
            shutil.copy(src, scene_dir / src.name)
            continue
        with rasterio.open(src) as ds:
            profile, data = ds.profile, ds.read()
        profile.update(crs=None)
        with rasterio.open(scene_dir / src.name, "w", **profile) as dst:
            dst.write(data)
    torch.manual_seed(0)
    task = XTVesselDetection(**{**TINY_DETECTOR, "model": "xt_swinv2_tiny_none"})
    task = task_from_checkpoint(_save(task, tmp_path / "det.ckpt"), "cpu")
    with caplog.at_level("WARNING", logger="xt_plugins"):
        res = predict_scene(task, scene_dir, tmp_path / "out", threshold=0.0, progress=False)
    lines = [r.getMessage() for r in caplog.records if "no CRS" in r.getMessage()]
    assert len(lines) == 1 and "nocrs" in lines[0] and "\n" not in lines[0]
    df = res.detections
    assert len(df) > 0 and set(df.coordinates) == {"pixel"}
    np.testing.assert_array_equal(df.detect_x, df.detect_scene_column + 0.5)
    np.testing.assert_array_equal(df.detect_y, df.detect_scene_row + 0.5)
    gj = json.loads((res.out_dir / "detections.geojson").read_text())
    assert "crs" not in gj and gj["metadata"]["coordinates"] == "pixel"
    _schema_check(gj)
    with rasterio.open(res.probabilities) as ds:
        assert ds.crs is None


def test_cli_blend_precision_tta_uint8(detection_checkpoint, sar_root, tmp_path, capsys):
    out = tmp_path / "pred"
    args = [
        "predict-scene",
        str(detection_checkpoint),
        str(sar_root / "scene_000"),
        "--no-progress",
    ]
    rc = main([*args, "--out", str(out), "--blend", "cosine", "--precision", "bf16",
               "--tta", "flips", "--uint8", "--threshold", "0.005"])  # fmt: skip
    assert rc == 0
    scene = out / "scene_000"
    with rasterio.open(scene / "probabilities.tif") as ds:
        assert ds.count == 3 and ds.dtypes[0] == "uint8" and ds.descriptions[0] == "centre"
    with rasterio.open(scene / "length_m.tif") as ds:
        assert ds.count == 1 and ds.dtypes[0] == "float32" and ds.descriptions == ("length_m",)
    assert len(pd.read_csv(scene / "detections.csv")) > 0
    capsys.readouterr()
    rc = main([*args, "--out", str(tmp_path / "fp16"), "--precision", "16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "needs a CUDA device" in err[0]
