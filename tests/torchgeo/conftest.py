"""Fixtures of the TorchGeo tests: small synthetic SAR scenes written once per session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ..conftest import TINY_BACKBONES, TINY_CONTEXT

#: Tiny Swin-V2 region encoder + one-layer context, as ``model_kwargs`` of the xT tasks.
TINY_SWIN = dict(TINY_BACKBONES["swinv2_tiny"], context_kwargs=dict(TINY_CONTEXT))
#: A tiny xT vessel detector (64-px regions): task kwargs.
TINY_DETECTOR = dict(
    model="xt_swinv2_tiny_mamba", region_size=64, model_kwargs=TINY_SWIN, decoder_channels=16
)


@pytest.fixture(scope="session")
def sar_workdir(tmp_path_factory) -> Path:
    """A working folder with ``data/sar_scenes`` = 2 scenes of 600 x 500 px (written by the CLI)."""
    from xt_plugins.cli import main

    work = tmp_path_factory.mktemp("sar_work")
    rc = main(
        ["make-sar-scenes", str(work / "data" / "sar_scenes"), "--n", "2", "--size", "600x500"]
        + ["--seed", "7", "--no-progress"]
    )
    assert rc == 0
    return work


@pytest.fixture(scope="session")
def sar_root(sar_workdir) -> Path:
    return sar_workdir / "data" / "sar_scenes"


@pytest.fixture
def scene_copy(sar_root, tmp_path) -> Path:
    """A private copy of scene_000 to damage."""
    dst = tmp_path / "scene"
    shutil.copytree(sar_root / "scene_000", dst)
    return dst


CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "torchgeo"
#: Command-line overrides that make the vessel-detection configs tiny (64-px regions).
TINY_DETECTION_ARGS = [
    "--model.init_args.region_size=64",
    "--model.init_args.decoder_channels=16",
    "--model.init_args.model_kwargs="
    '{"embed_dim": 24, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "window_size": 4,'
    ' "context_kwargs": {"depth": 1, "d_state": 8}}',
    "--data.init_args.region_px=64",
    "--data.init_args.window_px=128",
    "--trainer.enable_progress_bar=false",
]


def torchgeo_fit(*args: str) -> None:
    """``torchgeo fit ARGS`` in this process (what the ``torchgeo`` script runs)."""
    import sys

    from torchgeo.main import main

    argv, sys.argv = sys.argv, ["torchgeo"]  # not pytest's arguments
    try:
        main(["fit", *args])
    finally:
        sys.argv = argv


@pytest.fixture(scope="session")
def detection_checkpoint(sar_workdir, tmp_path_factory) -> Path:
    """A real Lightning checkpoint of the tiny vessel-detection recipe (one training step)."""
    root = tmp_path_factory.mktemp("ckpt_run")
    cwd = Path.cwd()
    os.chdir(sar_workdir)  # the config reads data/sar_scenes relative to the working folder
    try:
        torchgeo_fit(
            "--config",
            str(CONFIGS / "vessel_detection.yaml"),
            *TINY_DETECTION_ARGS,
            "--data.init_args.num_workers=0",
            "--trainer.max_steps=1",
            "--trainer.limit_val_batches=2",
            "--trainer.val_check_interval=1",
            f"--trainer.default_root_dir={root}",
        )
    finally:
        os.chdir(cwd)
    ckpts = sorted(root.rglob("last.ckpt"))
    assert ckpts, f"no checkpoint under {root}"
    return ckpts[0]


@pytest.fixture
def fit_trainers(monkeypatch) -> list:
    """The Trainers whose ``fit`` runs during the test (filled in as they run)."""
    from lightning.pytorch import Trainer

    trainers, fit = [], Trainer.fit

    def recording_fit(self, *args, **kwargs):
        trainers.append(self)
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "fit", recording_fit)
    return trainers
