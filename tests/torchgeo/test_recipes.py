"""The shipped configs run with ``torchgeo fit --trainer.fast_dev_run=true`` on generated scenes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import rasterio
import torch

from .conftest import CONFIGS, TINY_DETECTION_ARGS, torchgeo_fit

STOPPED = "`Trainer.fit` stopped: `max_steps=1` reached"
COMMON = [
    "--trainer.fast_dev_run=true",
    "--data.init_args.num_workers=0",
    "--trainer.enable_progress_bar=false",
]


@pytest.mark.parametrize(
    "config, extra",
    [
        # stock TorchGeo tasks with full-size models (they take no size options): 1 region
        # windows, a ConvNeXt-T region encoder for speed
        (
            "classification.yaml",
            ["--data.init_args.window_px=256", "--model.init_args.model=xt_convnext_tiny_none"],
        ),
        (
            "segmentation.yaml",
            [
                "--data.init_args.window_px=256",
                "--data.init_args.batch_size=1",
                "--model.init_args.backbone=tu-xt_convnext_tiny_txl",
            ],
        ),
        ("vessel_detection.yaml", TINY_DETECTION_ARGS),
    ],
)
def test_config_fast_dev_run(config, extra, sar_workdir, monkeypatch):
    from lightning.pytorch import Trainer

    trainers, fit = [], Trainer.fit

    def recording_fit(self, *args, **kwargs):
        trainers.append(self)
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "fit", recording_fit)
    monkeypatch.chdir(sar_workdir)
    torchgeo_fit("--config", str(CONFIGS / config), *COMMON, *extra)
    (trainer,) = trainers
    assert trainer.state.finished and trainer.global_step == 1
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train_loss"]) and torch.isfinite(metrics["val_loss"])
    if config == "vessel_detection.yaml":
        assert 0.0 <= float(metrics["val_xview3"]) <= 1.0


def test_shipped_configs_are_realistic():
    import yaml

    for name in ("classification", "segmentation", "vessel_detection", "vessel_detection_ddp"):
        cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        data = cfg["data"]["init_args"]
        assert data["root"] == "data/sar_scenes" and data["region_px"] == 256
        assert data["window_px"] >= 1024
    ddp = yaml.safe_load((CONFIGS / "vessel_detection_ddp.yaml").read_text())["trainer"]
    assert (ddp["accelerator"], ddp["devices"]) == ("cpu", 2)
    assert ddp["strategy"]["init_args"]["process_group_backend"] == "gloo"


def test_ddp_config_two_cpu_processes(sar_workdir):
    script = Path(sys.executable).with_name("torchgeo")
    cmd = [
        str(script),
        "fit",
        "--config",
        str(CONFIGS / "vessel_detection_ddp.yaml"),
        *COMMON,
        *TINY_DETECTION_ARGS,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, cwd=sar_workdir, capture_output=True, text=True, timeout=400, env=env)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log and "distributed_backend=gloo" in log
    assert STOPPED in log


def test_make_sar_scenes_command(tmp_path, capsys):
    from xt_plugins.cli import main

    assert (
        main(
            [
                "make-sar-scenes",
                str(tmp_path / "s"),
                "--n",
                "1",
                "--size",
                "96x80",
                "--no-bathymetry",
                "--quiet",
            ]
        )
        == 0
    )
    files = sorted(p.name for p in (tmp_path / "s" / "scene_000").iterdir())
    assert files == ["VH_dB.tif", "VV_dB.tif", "detections.csv"]
    with rasterio.open(tmp_path / "s" / "scene_000" / "VV_dB.tif") as ds:
        assert (ds.width, ds.height) == (96, 80)
    assert "scene_000: 96 x 80 px" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["make-sar-scenes", str(tmp_path / "t"), "--size", "96y80"])
