"""The wheel carries the recipes, configs and benchmarks: the demo and the bundle run from it."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO.parent / "shared" / "monai" / "meta_schema_20240725.json"


def _source_copy(dst: Path) -> Path:
    """The files git would ship (tracked and new, not ignored), copied to ``dst``."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)
    return dst


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The project built as a wheel and installed (no dependencies) into a folder of its own."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = _source_copy(tmp / "src")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    (wheel,) = (tmp / "dist").glob("xt_plugins-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "xt_plugins/_shipped/recipes/wsi_tumor_classification/configs/train.yaml" in names
    assert "xt_plugins/_shipped/configs/torchgeo/vessel_detection.yaml" in names
    assert "xt_plugins/_shipped/benchmarks/scan.py" in names
    site = tmp / "site"
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    return site


def _run_installed(site: Path, code: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, *code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.mark.slow
def test_wheel_runs_the_demo_help_from_the_installed_files(installed, tmp_path):
    out = _run_installed(
        installed,
        ["-c", "import xt_plugins, xt_plugins.resources as r; print(xt_plugins.__file__);"
         "print(*(r.shipped_path(n) for n in r.SHIPPED), sep='\\n')"],
        tmp_path,
    )  # fmt: skip
    paths = out.stdout.split()
    assert all(p.startswith(str(installed)) for p in paths), paths  # not the source tree
    demo = _run_installed(installed, ["-m", "xt_plugins.cli", "demo", "--help"], tmp_path)
    assert "usage: xt-plugins demo" in demo.stdout
    bench = _run_installed(installed, ["-m", "xt_plugins.cli", "bench", "list"], tmp_path)
    assert "scan" in bench.stdout.split()


@pytest.mark.slow
def test_wheel_bundle_metadata_verifies(installed, tmp_path):
    if importlib.util.find_spec("jsonschema") is None:
        pytest.skip("verify_metadata needs jsonschema (not installed)")
    if not SCHEMA.is_file():
        pytest.skip(f"schema {SCHEMA} not found (../shared/monai is absent)")
    schema = tmp_path / SCHEMA.name
    shutil.copy(SCHEMA, schema)
    code = (
        "import sys; from monai.bundle import verify_metadata; "
        "from xt_plugins.resources import shipped_path; "
        "meta = shipped_path('recipes') / 'wsi_tumor_classification' / 'configs' / "
        "'metadata.json'; assert str(meta).startswith(sys.argv[2]), meta; "
        "verify_metadata(meta_file=str(meta), filepath=sys.argv[1]); print('verified', meta)"
    )
    out = _run_installed(installed, ["-c", code, str(schema), str(installed)], tmp_path)
    assert "verified" in out.stdout
