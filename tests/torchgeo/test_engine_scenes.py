"""predict-scene through the engine: same-named scenes, a full disk, a read-only output folder
(issue 12, cases 1 and 5)."""

from __future__ import annotations

import csv
import shutil
import subprocess

import numpy as np
import pytest
import rasterio

from xt_plugins.cli import main

FAST = ["--window-regions", "3", "--overlap-regions", "1", "--no-progress"]


@pytest.fixture
def same_named(sar_root, tmp_path):
    a = shutil.copytree(sar_root / "scene_000", tmp_path / "scenes" / "scene_000")
    b = shutil.copytree(sar_root / "scene_001", tmp_path / "scenesB" / "scene_000")
    return a, b


def test_same_named_scenes_of_two_folders_are_both_kept(
    detection_checkpoint, sar_root, same_named, tmp_path
):
    a, b = same_named
    out = tmp_path / "out"
    assert (
        main(["predict-scene", str(detection_checkpoint), str(a), str(b), "--out", str(out), *FAST])
        == 0
    )
    ref = tmp_path / "ref"
    args = ["predict-scene", str(detection_checkpoint), str(sar_root / "scene_000")]
    assert main([*args, str(sar_root / "scene_001"), "--out", str(ref), *FAST]) == 0
    for got, want in (("scenes/scene_000", "scene_000"), ("scenesB/scene_000", "scene_001")):
        with (
            rasterio.open(out / got / "probabilities.tif") as x,
            rasterio.open(ref / want / "probabilities.tif") as y,
        ):
            np.testing.assert_array_equal(x.read(), y.read())
    with (out / "predictions.csv").open(newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["path"] for r in table] == [str(a.resolve()), str(b.resolve())]
    assert [r["status"] for r in table] == ["ok", "ok"]


def _mount_tmpfs(path, size, *options):
    path.mkdir(parents=True, exist_ok=True)
    opts = ",".join([f"size={size}", *options])
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                         capture_output=True)  # fmt: skip
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({res.stderr.decode().strip()})")


@pytest.mark.parametrize("kind", ["full", "read-only"])
def test_a_full_or_read_only_output_folder_is_one_line_per_scene(
    detection_checkpoint, sar_root, tmp_path, capsys, kind
):
    out = tmp_path / "out"
    _mount_tmpfs(out, "300k" if kind == "full" else "1m", *(["ro"] if kind == "read-only" else []))
    try:
        scenes = [str(sar_root / "scene_000"), str(sar_root / "scene_001")]
        rc = main(["predict-scene", str(detection_checkpoint), *scenes, "--out", str(out), *FAST])
        captured = capsys.readouterr()
        assert rc == 1  # nothing could be written
        lines = [line for line in captured.out.splitlines() if "skipped:" in line]
        assert len(lines) == 2, (captured.out, captured.err)
        assert all(s in line for s, line in zip(scenes, lines, strict=True))
        word = "No space left on device" if kind == "full" else "Read-only file system"
        assert all(word in line for line in lines), lines
        noise = [line for line in captured.err.splitlines() if line.strip()]
        assert not [line for line in noise if "ERROR" in line or "CPLE" in line], noise
    finally:
        subprocess.run(["umount", str(out)], check=False)
