"""The MONAI bundle recipes/wsi_tumor_classification: metadata, network shape, train, inference."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xt_plugins.monai import XTNet, load_checkpoint

from .conftest import MPP, REGION, THUMB, TINY_XTNET

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "recipes" / "wsi_tumor_classification"
SCHEMA = REPO.parent / "shared" / "monai" / "meta_schema_20240725.json"
#: Test-sized overrides of the shipped (realistic) configs.
TINY = {
    "mpp": MPP,
    "region_size": REGION,
    "thumbnail_size": THUMB,
    "network_def#region_encoder": TINY_XTNET["region_encoder"],
    "network_def#dims": TINY_XTNET["dims"],
    "network_def#depths": TINY_XTNET["depths"],
    "network_def#context_kwargs": TINY_XTNET["context_kwargs"],
}


def tiny_args(folder: Path, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "overrides.json"
    path.write_text(json.dumps({**TINY, **extra}))
    return path


def run_bundle(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, *args], cwd=BUNDLE, capture_output=True, text=True, env=env,
        timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_metadata_verifies_against_the_schema(tmp_path):
    if importlib.util.find_spec("jsonschema") is None:
        pytest.skip("verify_metadata needs jsonschema (not installed)")
    if not SCHEMA.is_file():
        pytest.skip(f"schema {SCHEMA} not found (../shared/monai is absent)")
    from monai.bundle import verify_metadata

    schema = tmp_path / SCHEMA.name  # verify_metadata may write beside it
    shutil.copy(SCHEMA, schema)
    verify_metadata(meta_file=str(BUNDLE / "configs" / "metadata.json"), filepath=str(schema))


@pytest.mark.parametrize("config", ["train.yaml", "inference.yaml"])
def test_verify_net_in_out_with_the_shipped_network(config):
    from monai.bundle import verify_net_in_out

    # the shipped Swin-V2-T + Mamba network on one 256-px region (n=1)
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(BUNDLE / "configs" / "metadata.json"),
        config_file=str(BUNDLE / "configs" / config),
        device="cpu",
    )


def test_verify_net_in_out_on_several_regions(tmp_path):
    from monai.bundle import verify_net_in_out

    verify_net_in_out(  # "256*n" with n = 2: 512 px, 8 x 8 tiny 64-px regions
        net_id="network_def",
        meta_file=str(BUNDLE / "configs" / "metadata.json"),
        config_file=str(BUNDLE / "configs" / "train.yaml"),
        device="cpu",
        n=2,
        args_file=str(tiny_args(tmp_path)),
    )


def test_bundle_trains_then_infers_on_a_folder_of_slides(tmp_path, slides):
    folder, infos = slides
    root = tmp_path / "bundle"
    common = ["--bundle_root", str(root), "--dataset_dir", str(folder)]
    train_overrides = tiny_args(
        tmp_path / "train",
        epochs=2,
        val_fraction=0.5,
        learning_rate=1e-3,
        **{"train#handlers#1#save_interval": 1, "train#handlers#1#n_saved": 2},
    )
    train = run_bundle(
        ["-m", "monai.bundle", "run", "--config_file", "configs/train.yaml", *common]
        + ["--args_file", str(train_overrides)]
    )
    assert "val_accuracy" in train.stdout + train.stderr
    models = root / "models"
    best = torch.load(models / "model.pt", weights_only=True)  # plain types only
    assert set(best) == {"model", "config"} and best["config"]["region_encoder"] == "convnext_tiny"
    net = load_checkpoint(models / "model.pt")
    assert isinstance(net, XTNet) and net.region_size == REGION
    epochs = [
        torch.load(models / f"checkpoint_epoch={e}.pt", weights_only=True)["model"] for e in (1, 2)
    ]
    stem = "region_encoder.backbone.stem_0.weight"
    assert not torch.equal(epochs[0][stem], epochs[1][stem])  # the region encoder trains
    assert (models / "model_final.pt").is_file()

    run_bundle(
        ["-m", "monai.bundle", "run", "--config_file", "configs/inference.yaml", *common]
        + ["--args_file", str(tiny_args(tmp_path))]
    )
    out = root / "eval"
    with (out / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["slide"] for r in rows] == [i.path.name for i in infos]
    assert [r["label"] for r in rows] == ["0", "1", "0", "1"] and {r["status"] for r in rows} == {
        "ok"
    }
    for info in infos:
        for name in (
            f"{info.path.stem}.zarr",
            f"{info.path.stem}_heatmap.png",
            f"{info.path.stem}.geojson",
        ):
            assert (out / name).exists()


def test_multi_gpu_config_trains_with_two_processes(tmp_path, slides):
    folder, _ = slides
    root = tmp_path / "bundle"
    overrides = tiny_args(tmp_path, epochs=1, val_fraction=0.5)
    configs = "['configs/train.yaml','configs/multi_gpu_train.yaml']"
    run_bundle(
        [
            "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "monai.bundle", "run", "--config_file", configs, "--bundle_root", str(root),
            "--dataset_dir", str(folder), "--args_file", str(overrides),
        ]
    )  # fmt: skip
    final = torch.load(root / "models" / "model_final.pt", weights_only=True)
    assert final["config"]["out_channels"] == 2 and len(final["model"]) > 10
