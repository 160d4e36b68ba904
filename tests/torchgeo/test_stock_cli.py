"""Stock TorchGeo configs with xT names through ``xt-plugins torchgeo fit``.

A stock task (``torchgeo.tasks.Classification``) and a stock data module
(``torchgeo.datamodules.EuroSATDataModule``) on fake EuroSAT files laid out as TorchGeo's
``EuroSAT`` reads them: nothing in the config imports xt_plugins.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

REPO = Path(__file__).resolve().parents[2]
EUROSAT_DIR = Path("ds/images/remote_sensing/otherDatasets/sentinel_2/tif")
CLASSES = ("Forest", "SeaLake")


def _fake_eurosat(root: Path) -> Path:
    """Two classes x 3 images of 13 bands, 64 x 64 px, and the three split files."""
    rng = np.random.default_rng(0)
    names = []
    for cls in CLASSES:
        folder = root / EUROSAT_DIR / cls
        folder.mkdir(parents=True)
        for i in range(1, 4):
            data = rng.integers(0, 3000, (13, 64, 64), dtype=np.uint16)
            with rasterio.open(
                folder / f"{cls}_{i}.tif", "w", driver="GTiff", width=64, height=64, count=13,
                dtype="uint16",
            ) as dst:  # fmt: skip
                dst.write(data)
            names.append(f"{cls}_{i}.jpg")  # the split files list .jpg names
    for split in ("train", "val", "test"):
        (root / f"eurosat-{split}.txt").write_text("\n".join(names) + "\n")
    return root


STOCK_CONFIG = """\
model:
  class_path: torchgeo.tasks.Classification
  init_args:
    model: xt_convnext_tiny_mamba
    in_channels: 3
    task: multiclass
    num_classes: 2
    loss: ce
data:
  class_path: torchgeo.datamodules.EuroSATDataModule
  init_args:
    batch_size: 2
    num_workers: 0
  dict_kwargs:
    root: {root}
    bands: [B04, B03, B02]
trainer:
  accelerator: cpu
  enable_progress_bar: false
  logger: false
"""


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
def test_stock_config_runs_through_xt_plugins_torchgeo(tmp_path):
    root = _fake_eurosat(tmp_path / "eurosat")
    config = tmp_path / "eurosat.yaml"
    config.write_text(STOCK_CONFIG.format(root=root))
    args = ["fit", "--config", str(config), "--trainer.fast_dev_run=true"]
    # plain `torchgeo fit`: nothing imports xt_plugins, so timm does not know the name
    plain = _run([str(Path(sys.executable).with_name("torchgeo")), *args], tmp_path)
    assert plain.returncode != 0 and "Unknown model" in plain.stderr[-4000:]
    # the documented route: TorchGeo's own CLI after `import xt_plugins`
    ours = _run([sys.executable, "-m", "xt_plugins.torchgeo", *args], tmp_path)
    log = ours.stdout + ours.stderr
    assert ours.returncode == 0, log[-4000:]
    assert "`Trainer.fit` stopped: `max_steps=1` reached" in log


@pytest.mark.parametrize(
    "task, parent",
    [
        ("XTClassification", "Classification"),
        ("XTSemanticSegmentation", "SemanticSegmentation"),
        ("XTVesselDetection", "BaseTask"),
    ],
)
def test_print_config_lists_every_torchgeo_and_xt_argument(task, parent, capsys):
    import inspect

    import torchgeo.tasks
    import yaml

    from xt_plugins.cli import main
    from xt_plugins.torchgeo import tasks

    with pytest.raises(SystemExit) as info:
        main(
            ["torchgeo", "fit", "--print_config", f"--model=xt_plugins.torchgeo.{task}"]
            + ["--data=xt_plugins.torchgeo.SARSceneDataModule", "--data.root=data"]
        )
    assert info.value.code == 0
    model = yaml.safe_load(capsys.readouterr().out)["model"]
    assert model["class_path"].endswith(task)
    theirs = set(inspect.signature(getattr(torchgeo.tasks, parent).__init__).parameters)
    xt_options = set(inspect.signature(tasks.XTTaskOptions.__init__).parameters)
    expected = (theirs | xt_options) - {"self", "kwargs"}
    if task == "XTVesselDetection":
        expected |= {"decoder_channels", "out_stride", "score_threshold", "lr", "weights"}
    assert expected <= set(model["init_args"]), expected - set(model["init_args"])


ALL_ARGS_CONFIG = """\
model:
  class_path: xt_plugins.torchgeo.XTClassification
  init_args:
    model: xt_swinv2_tiny_mamba
    weights: null
    in_channels: 2
    task: binary
    num_classes: null
    num_labels: null
    labels: [background, vessel]
    pos_weight: null
    loss: bce
    class_weights: null
    ignore_index: null
    lr: 1.0e-3
    patience: 3
    freeze_backbone: false
    region_size: 64
    context: txl
    context_pool: 1
    grad_ratio: 0.5
    region_chunk: 2
    checkpoint_regions: true
    model_kwargs: {model_kwargs}
data:
  class_path: xt_plugins.torchgeo.SARSceneDataModule
  init_args:
    root: data/sar_scenes
    task: classification
    window_px: 128
    region_px: 64
    batch_size: 2
    num_workers: 0
trainer:
  fast_dev_run: true
  enable_progress_bar: false
"""


def test_config_with_every_argument_parses_and_trains(
    sar_workdir, tmp_path, monkeypatch, fit_trainers
):
    import json

    from xt_plugins.cli import main

    from .conftest import TINY_SWIN

    config = tmp_path / "all.yaml"
    config.write_text(ALL_ARGS_CONFIG.format(model_kwargs=json.dumps(TINY_SWIN)))
    monkeypatch.chdir(sar_workdir)
    assert main(["torchgeo", "fit", "--config", str(config)]) == 0
    (trainer,) = fit_trainers
    assert trainer.state.finished and trainer.global_step == 1
    hp = trainer.lightning_module.hparams
    assert (hp["patience"], hp["labels"], hp["context"], hp["grad_ratio"]) == (
        3, ["background", "vessel"], "txl", 0.5
    )  # fmt: skip
    model = trainer.lightning_module.model
    assert (model.context_name, model.region_chunk, model.checkpoint_regions) == ("txl", 2, True)
