"""xT with TorchGeo tasks: registry, stock tasks with xT names, the xT tasks, training steps."""

import subprocess
import sys
import textwrap

import pytest
import torch

import xt_plugins
from xt_plugins.torchgeo import (
    XTClassification,
    XTSemanticSegmentation,
    XTVesselDetection,
    register_torchgeo_models,
)
from xt_plugins.torchgeo.datamodules import SARSceneDataModule
from xt_plugins.torchgeo.tasks import decode_detections, ground_truth_detections

from .conftest import TINY_DETECTOR, TINY_SWIN


def _train_step(task, batch):
    task.train()
    opt = task.configure_optimizers()["optimizer"]
    before = [p.detach().clone() for p in task.model.parameters() if p.requires_grad]
    loss = task.training_step(batch, 0)
    loss.backward()
    opt.step()
    after = [p for p in task.model.parameters() if p.requires_grad]
    changed = sum(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    return float(loss), changed / len(before)


# ---------------------------------------------------------------------------- registry
def test_timm_registry_is_the_way_and_torchgeo_private_state_is_untouched():
    code = textwrap.dedent(
        """
        import sys, warnings
        import timm
        import xt_plugins.torchgeo
        assert not any("torchgeo" in type(f).__module__ for f in sys.meta_path)
        assert not any("xt_plugins" in type(f).__module__ for f in sys.meta_path)
        import torchgeo.models
        from torchgeo.models import api
        print(sum(n.startswith("xt_") for n in api._model), len(timm.list_models("xt_*")))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    untouched, in_timm = map(int, out.stdout.split()[-2:])
    assert untouched == 0 and in_timm >= 24


def test_register_torchgeo_models_is_a_deprecated_no_op():
    with pytest.warns(DeprecationWarning, match="timm.list_models"):
        assert register_torchgeo_models() is False


# ---------------------------------------------------------------------------- stock tasks
def test_stock_classification_task_full_size_swin():
    from torchgeo.trainers import ClassificationTask

    task = ClassificationTask(
        model="xt_swinv2_tiny_mamba", in_channels=2, task="binary", loss="bce", lr=1e-3
    )
    assert isinstance(task.model, xt_plugins.XTModel) and task.model.context_name == "mamba"
    batch = {"image": torch.randn(1, 2, 256, 256), "label": torch.tensor([1])}
    loss, changed = _train_step(task, batch)
    assert torch.isfinite(torch.tensor(loss)) and changed > 0.5


def test_stock_segmentation_task_full_size_swin():
    from torchgeo.trainers import SemanticSegmentationTask

    task = SemanticSegmentationTask(
        model="unet", backbone="tu-xt_swinv2_tiny_txl", in_channels=2, num_classes=3, lr=1e-3
    )
    batch = {"image": torch.randn(1, 2, 256, 256), "mask": torch.randint(0, 3, (1, 256, 256))}
    task.eval()
    with torch.no_grad():
        assert task(batch["image"]).shape == (1, 3, 256, 256)
    loss, changed = _train_step(task, batch)
    assert torch.isfinite(torch.tensor(loss)) and changed > 0.5


# ---------------------------------------------------------------------------- xT tasks
def test_xt_classification_exposes_xt_options():
    task = XTClassification(
        model="xt_swinv2_tiny_txl",
        in_channels=2,
        region_size=64,
        context_pool=1,
        grad_ratio=0.5,
        region_chunk=2,
        model_kwargs=TINY_SWIN,
    )
    m = task.model
    assert (m.region_size, m.context_pool, m.grad_ratio, m.region_chunk) == (64, 1, 0.5, 2)
    assert task.hparams["region_size"] == 64 and m.num_classes == 1
    batch = {"image": torch.randn(2, 2, 130, 70), "label": torch.tensor([0, 1])}
    loss, changed = _train_step(task, batch)
    assert torch.isfinite(torch.tensor(loss)) and changed > 0.3
    with pytest.raises(ValueError, match="not a registered xT model"):
        XTClassification(model="resnet18")
    with pytest.raises(ValueError, match="xt_swinv2_tiny_lstm"):
        XTClassification(context="lstm")
    other = XTClassification(
        model="xt_swinv2_tiny_txl", context="hyper", region_size=64, model_kwargs=TINY_SWIN
    )
    assert other.model.context_name == "hyper"
    with pytest.raises(ValueError, match=r"model_kwargs \['region_size'\]"):
        XTClassification(model_kwargs={"region_size": 32})


def test_xt_semantic_segmentation():
    task = XTSemanticSegmentation(
        backbone="xt_swinv2_tiny_mamba",
        in_channels=2,
        num_classes=3,
        region_size=64,
        model_kwargs=TINY_SWIN,
    )
    enc = task.model.encoder.model.model  # smp -> timm features wrapper -> XTModel
    assert isinstance(enc, xt_plugins.XTModel) and enc.region_size == 64
    batch = {"image": torch.randn(1, 2, 128, 192), "mask": torch.randint(0, 3, (1, 128, 192))}
    task.eval()
    with torch.no_grad():
        assert task(batch["image"]).shape == (1, 3, 128, 192)
    loss, _ = _train_step(task, batch)
    assert torch.isfinite(torch.tensor(loss))


@pytest.fixture(scope="module")
def detection_batch(sar_root):
    dm = SARSceneDataModule(
        str(sar_root), task="detection", window_px=128, region_px=64, batch_size=4, min_valid=0.8
    )
    dm.setup("fit")
    # the first windows of scene_000 that hold objects
    ds, batch = dm.train_dataset, []
    for w in dm.train_sampler.windows:
        sample = ds[w.geoslice]
        if (sample["heatmap"] == 1).any():
            batch.append(sample)
        if len(batch) == 4:
            break
    dm.teardown("fit")
    return {k: torch.stack([s[k] for s in batch]) for k in batch[0]}


def test_vessel_detection_learns_a_batch(detection_batch):
    torch.manual_seed(0)
    task = XTVesselDetection(**TINY_DETECTOR, lr=3e-3)
    out = task(detection_batch["image"])
    n = detection_batch["image"].shape[0]
    assert n >= 2
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        k: (n, 1, 32, 32) for k in ("heatmap", "vessel", "fishing", "length")
    }
    opt = task.configure_optimizers()["optimizer"]
    task.train()
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss = task.training_step(detection_batch, 0)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses


def test_decoding_perfect_outputs_scores_one(detection_batch):
    b = detection_batch
    logit = lambda p: torch.logit(p.clamp(1e-4, 1 - 1e-4))  # noqa: E731
    out = {
        "heatmap": logit(b["heatmap"]),
        "vessel": logit((b["vessel"] > 0.5).float())[:, None],
        "fishing": logit((b["fishing"] > 0.5).float())[:, None],
        "length": b["length"].clamp_min(1).log()[:, None],
    }
    ps = b["transform"][:, 0]
    preds = decode_detections(out, 4, ps, threshold=0.5, valid=b["valid"])
    gts = ground_truth_detections(b, 4, ps)
    assert [len(p["detect_x"]) for p in preds] == [len(g["detect_x"]) for g in gts]
    task = XTVesselDetection(**TINY_DETECTOR)
    task._update_metric(task.val_metrics, out, b)
    scores = {k: float(v) for k, v in task.val_metrics.compute().items()}
    assert scores == pytest.approx(dict.fromkeys(scores, 1.0), abs=1e-6)


def test_stride_mismatch_is_explained(detection_batch):
    task = XTVesselDetection(**TINY_DETECTOR, out_stride=2)
    with pytest.raises(ValueError, match="target_stride"):
        task.compute_losses(task(detection_batch["image"][:1]), detection_batch)
