"""``xt-plugins predict-slide`` (one process and several) and ``xt-plugins make-slides``."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import zarr

from xt_plugins.cli import main
from xt_plugins.monai import save_checkpoint

from .conftest import MPP, REGION, THUMB, TINY_XTNET, fixture_file, tiny_xtnet

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_KWARGS = {
    k: v for k, v in TINY_XTNET.items() if k not in ("region_encoder", "context", "region_size")
}
FAST = ["--mpp", str(MPP), "--thumbnail-size", str(THUMB), "--no-progress"]
MODEL = ["--model", "xt_convnext_tiny_mamba", "--region-size", str(REGION)]
MODEL += ["--model-kwargs", json.dumps(TINY_KWARGS)]


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_slide_untrained_warns_and_reports_each_bad_slide(tmp_path, slides, capsys):
    folder, infos = slides
    bad = [fixture_file("unopenable.tiff"), fixture_file("unreadable.svs")]
    args = [str(infos[0].path), *map(str, bad), str(infos[1].path)]
    rc = main(["predict-slide", *args, "--out", str(tmp_path), *MODEL, *FAST])
    err = capsys.readouterr().err
    assert rc == 0
    assert "untrained weights" in err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 2
    assert "unopenable.tiff" in lines[0] and "Unsupported TIFF compression" in lines[0]
    assert "unreadable.svs" in lines[1] and "Bogus marker length" in lines[1]
    rows = read_rows(tmp_path / "predictions.csv")
    assert [r["slide"] for r in rows] == [
        infos[0].path.name,
        *(b.name for b in bad),
        infos[1].path.name,
    ]
    assert [r["status"] for r in rows] == ["ok", "error", "error", "ok"]
    for info in infos[:2]:
        stem = info.path.stem
        assert zarr.open_group(str(tmp_path / f"{stem}.zarr"), mode="r")["probs"].shape == (
            2,
            12,
            16,
        )
        assert (tmp_path / f"{stem}_heatmap.png").is_file()
        assert (tmp_path / f"{stem}.geojson").is_file()
    rc = main(["predict-slide", *map(str, bad), "--out", str(tmp_path / "none"), *MODEL, *FAST])
    assert rc == 1  # every slide failed
    assert main(["predict-slide", str(infos[0].path), "--out", str(tmp_path), *FAST]) == 1
    assert "--checkpoint CKPT" in capsys.readouterr().err


def test_predict_slide_from_a_checkpoint_folder_and_slide_mpp(tmp_path, slides, bad_slides, capsys):
    folder, infos = slides
    ckpt = save_checkpoint(tiny_xtnet(seed=2), tmp_path / "model.pt")
    out = tmp_path / "out"
    rc = main(["predict-slide", str(folder), "--checkpoint", str(ckpt), "--out", str(out), *FAST])
    assert rc == 0 and "untrained" not in capsys.readouterr().err
    rows = read_rows(out / "predictions.csv")
    assert [r["label"] for r in rows] == ["0", "1", "0", "1"]  # from the folder's labels.csv
    assert all(r["status"] == "ok" for r in rows)
    no_mpp = str(bad_slides["no_mpp"])
    args = ["--checkpoint", str(ckpt), *FAST]
    assert main(["predict-slide", no_mpp, "--out", str(tmp_path / "a"), *args]) == 1
    assert "--slide-mpp" in capsys.readouterr().err
    assert (
        main(["predict-slide", no_mpp, "--out", str(tmp_path / "b"), "--slide-mpp", "0.5", *args])
        == 0
    )


def test_ranks_without_a_process_group_merge_through_marker_files(tmp_path, slides, monkeypatch):
    folder, infos = slides
    args = ["predict-slide", str(folder), "--out", str(tmp_path), *MODEL, *FAST]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("RANK", "1")
    assert main(args) == 0  # slides 1 and 3; rank 1 leaves its CSV and marker
    assert (tmp_path / "predictions.rank1.done").is_file()
    monkeypatch.setenv("RANK", "0")
    assert main(args) == 0  # slides 0 and 2, then merges
    rows = read_rows(tmp_path / "predictions.csv")
    assert [r["slide"] for r in rows] == [i.path.name for i in infos]
    assert sorted(p.name for p in tmp_path.glob("predictions*")) == ["predictions.csv"]


def test_predict_slide_under_torchrun_splits_slides_and_merges(tmp_path, slides):
    folder, infos = slides
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "xt_plugins.cli", "predict-slide",
        str(folder), str(fixture_file("unopenable.tiff")), "--out", str(out), *MODEL, *FAST,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("Unsupported TIFF compression") == 1
    rows = read_rows(out / "predictions.csv")
    assert [r["slide"] for r in rows] == [i.path.name for i in infos] + ["unopenable.tiff"]
    assert [r["status"] for r in rows] == ["ok"] * 4 + ["error"]
    assert sorted(p.name for p in out.glob("predictions*")) == ["predictions.csv"]
    assert len(list(out.glob("*_heatmap.png"))) == 4
    assert "4 of 5 slides predicted" in proc.stdout


def test_make_slides_command(tmp_path, capsys):
    rc = main(
        [
            "make-slides",
            str(tmp_path),
            "--n",
            "2",
            "--size",
            "600x400",
            "--seed",
            "1",
            "--no-progress",
        ]
    )
    assert rc == 0
    rows = read_rows(tmp_path / "labels.csv")
    assert [r["slide"] for r in rows] == ["slide_000.tiff", "slide_001.tiff"]
    assert sorted(r["label"] for r in rows) == ["0", "1"]
    assert {(r["width"], r["height"], r["mpp"]) for r in rows} == {("600", "400", "0.5")}
    with pytest.raises(SystemExit):
        main(["make-slides", str(tmp_path), "--size", "600by400"])
