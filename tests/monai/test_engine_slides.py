"""predict-slide through the engine: same-named slides, damaged stores, folders among slides,
predictions.csv across runs, kill -9 (issue 12, cases 1-3)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from xt_plugins.cli import main

from .conftest import MPP, REGION, THUMB, TINY_XTNET

TINY = {
    k: v for k, v in TINY_XTNET.items() if k not in ("region_encoder", "context", "region_size")
}
ARGS = ["--model", "xt_convnext_tiny_mamba", "--region-size", str(REGION)]
ARGS += ["--model-kwargs", json.dumps(TINY), "--mpp", str(MPP), "--thumbnail-size", str(THUMB)]
ARGS += ["--no-progress"]


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def predict(*inputs, out):
    return main(["predict-slide", *map(str, inputs), "--out", str(out), *ARGS])


def chunks(array_dir):
    return sorted(p for p in (array_dir / "c").rglob("*") if p.is_file())


@pytest.fixture
def two_same_named(slides, tmp_path):
    _, infos = slides
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = shutil.copy(infos[0].path, tmp_path / "a" / "slide.tiff")
    b = shutil.copy(infos[1].path, tmp_path / "b" / "slide.tiff")
    return infos, a, b


def test_same_named_slides_of_two_folders_keep_their_own_results(two_same_named, tmp_path):
    infos, a, b = two_same_named
    assert predict(infos[0].path, infos[1].path, out=tmp_path / "truth") == 0
    truth = {r["slide"]: r for r in rows(tmp_path / "truth" / "predictions.csv")}
    out = tmp_path / "out"
    assert predict(a, b, out=out) == 0
    got = rows(out / "predictions.csv")
    assert [r["path"] for r in got] == [str(a), str(b)]
    for row, info in zip(got, infos[:2], strict=True):
        ref = truth[info.path.name]
        assert row["probability"] == ref["probability"]
        assert row["tissue_regions"] == ref["tissue_regions"]
    assert [r["zarr"] for r in got] == [
        str(out / "a" / "slide.zarr"),
        str(out / "b" / "slide.zarr"),
    ]
    for sub in ("a", "b"):
        assert (out / sub / "slide_heatmap.png").is_file() and (
            out / sub / "slide.geojson"
        ).is_file()
    # predicting b alone into the same folder resumes b's store, never a's
    assert predict(b, out=out) == 0
    again = {r["path"]: r for r in rows(out / "predictions.csv")}
    assert again[str(b)]["probability"] == got[1]["probability"]
    assert again[str(a)] == got[0]  # the other slide's row is kept


def test_damaged_slide_stores_are_recomputed(slides, tmp_path):
    _, infos = slides
    slide = infos[1].path
    out = tmp_path / "out"
    assert predict(slide, out=out) == 0
    truth = rows(out / "predictions.csv")[0]
    store = out / f"{slide.stem}.zarr"
    for f in chunks(store / "probs"):  # a finished store that lost its probs chunk
        f.unlink()
    assert predict(slide, out=out) == 0
    row = rows(out / "predictions.csv")[0]
    assert row["tissue_regions"] == truth["tissue_regions"] != "0"
    assert row["probability"] == truth["probability"]
    # a corrupt chunk: recomputed, not a decompression error on every rerun
    for f in chunks(store / "probs"):
        f.write_bytes(b"\x28\xb5\x2f\xfd" + b"junk" * 8)
    assert predict(slide, out=out) == 0
    assert rows(out / "predictions.csv")[0]["probability"] == truth["probability"]


def test_folders_among_slides_fail_alone(slides, tmp_path, capsys):
    _, infos = slides
    (tmp_path / "empty").mkdir()
    (tmp_path / "x.svs").mkdir()
    out = tmp_path / "out"
    assert predict(tmp_path / "empty", tmp_path / "x.svs", infos[0].path, out=out) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(err) == 2
    assert "empty: no slides in this folder" in err[0] and "x.svs: is a folder" in err[1]
    assert [r["status"] for r in rows(out / "predictions.csv")] == ["error", "error", "ok"]


def test_kill_9_resumes_to_identical_outputs(slides, tmp_path):
    """A run killed mid-slide resumes where it stopped; the outputs equal an uninterrupted run."""
    _, infos = slides
    slide = infos[3].path
    fresh, killed = tmp_path / "fresh", tmp_path / "killed"
    assert predict(slide, out=fresh) == 0
    env = {**os.environ, "XT_TEST_SLOW_BATCHES": "1"}
    cmd = [sys.executable, "-c", _SLOW_RUN, str(slide), str(killed), json.dumps(ARGS)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = killed / f"{slide.stem}.zarr" / "state"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            done = int((zarr.open_array(str(state), mode="r")[:] == 1).sum())
        except Exception:
            done = 0
        if done >= 8:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert predict(slide, out=killed) == 0
    a = zarr.open_group(str(fresh / f"{slide.stem}.zarr"), mode="r")
    b = zarr.open_group(str(killed / f"{slide.stem}.zarr"), mode="r")
    np.testing.assert_array_equal(a["probs"][:], b["probs"][:])
    ra, rb = rows(fresh / "predictions.csv")[0], rows(killed / "predictions.csv")[0]
    assert ra["probability"] == rb["probability"] and ra["tissue_regions"] == rb["tissue_regions"]


# A predict-slide run whose region batches are slowed down (so the test can kill it mid-slide).
_SLOW_RUN = """
import json, sys, time
import xt_plugins.monai.training as training
normalize = training.RegionNormalize.__call__
def slow(self, x):
    time.sleep(0.3)
    return normalize(self, x)
training.RegionNormalize.__call__ = slow
from xt_plugins.cli import main
sys.exit(main(["predict-slide", sys.argv[1], "--out", sys.argv[2], "--batch", "2",
               *json.loads(sys.argv[3])]))
"""
