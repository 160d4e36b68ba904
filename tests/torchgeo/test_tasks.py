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


# ---------------------------------------------------------------------------- optimizers
def test_xt_tasks_exempt_mamba_and_norms_from_weight_decay_keeping_torchgeos_schedule():
    from torch.optim.lr_scheduler import ReduceLROnPlateau
    from torchgeo.tasks import BaseTask

    task = XTClassification(
        model="xt_swinv2_tiny_mamba", region_size=64, model_kwargs=TINY_SWIN, patience=3
    )
    ours = task.configure_optimizers()
    stock = BaseTask.configure_optimizers(task)  # TorchGeo's own: one group
    opt = ours["optimizer"]
    assert type(opt) is type(stock["optimizer"]) and len(stock["optimizer"].param_groups) == 1
    assert opt.defaults["lr"] == stock["optimizer"].defaults["lr"] == task.hparams["lr"]
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    names = dict(task.named_parameters())
    a_log = [n for n in names if n.endswith("A_log")]
    assert a_log and all(decay[id(names[n])] == 0.0 for n in a_log)
    assert decay[id(names["model.head.fc.weight"])] == stock["optimizer"].defaults["weight_decay"]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(names)
    sched = ours["lr_scheduler"]
    assert isinstance(sched["scheduler"], ReduceLROnPlateau) and sched["scheduler"].patience == 3
    assert sched["monitor"] == stock["lr_scheduler"]["monitor"]
    det = XTVesselDetection(**TINY_DETECTOR).configure_optimizers()["optimizer"]
    assert {g["weight_decay"] for g in det.param_groups} == {0.0, 0.01}


# ---------------------------------------------------------------------------- weights
def _tiny_convnext_task(**kwargs):
    from ..conftest import TINY_BACKBONES, TINY_CONTEXT

    mk = dict(TINY_BACKBONES["convnext_tiny"], context_kwargs=dict(TINY_CONTEXT))
    return XTClassification(
        model="xt_convnext_tiny_mamba", region_size=64, model_kwargs=mk, **kwargs
    )


def _weights_enum(tmp_path, state, meta):
    import kornia.augmentation as K
    from torchvision.models._api import Weights, WeightsEnum

    path = tmp_path / "sar_convnext.pth"
    torch.save(state, path)
    transforms = torch.nn.Sequential(K.Normalize(mean=[-12.0, -20.0], std=[4.0, 5.0]))

    class TinyWeights(WeightsEnum):
        SAR = Weights(url=path.as_uri(), transforms=transforms, meta=meta)

    return TinyWeights.SAR


def test_xt_task_loads_a_torchgeo_weights_enum(tmp_path, monkeypatch):
    import timm

    from ..conftest import TINY_BACKBONES

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))  # the download cache
    torch.manual_seed(1)
    plain = timm.create_model("convnext_tiny", in_chans=2, **TINY_BACKBONES["convnext_tiny"])
    meta = {"model": "convnext_tiny", "in_chans": 2, "publication": "test"}
    weights = _weights_enum(tmp_path, plain.state_dict(), meta)
    task = _tiny_convnext_task(weights=weights, in_channels=2)
    enc = task.model.region_encoder.backbone
    assert torch.equal(enc.stem_0.weight, plain.stem[0].weight)  # the weights arrived
    assert torch.equal(
        enc.stages_3.blocks[0].conv_dw.weight, plain.stages[3].blocks[0].conv_dw.weight
    )
    assert task.model.pretrained_cfg["mean"] == (-12.0, -20.0)
    assert task.model.pretrained_cfg["std"] == (4.0, 5.0)
    assert (task.model.region_encoder.mean, task.model.region_encoder.std) == ((-12, -20), (4, 5))
    # 3-band weights into the 2-band model: the stem is adapted as timm does
    rgb = timm.create_model("convnext_tiny", in_chans=3, **TINY_BACKBONES["convnext_tiny"])
    w3 = _weights_enum(tmp_path, rgb.state_dict(), {**meta, "in_chans": 3})
    with pytest.warns(UserWarning, match="3 input channels"):
        adapted = _tiny_convnext_task(weights=w3, in_channels=2)
    assert adapted.model.region_encoder.backbone.stem_0.weight.shape[1] == 2
    bad = _weights_enum(tmp_path, plain.state_dict(), {**meta, "model": "resnet50"})
    with pytest.raises(ValueError, match=r"'resnet50' backbone.*'convnext_tiny'"):
        _tiny_convnext_task(weights=bad, in_channels=2)
    from torchgeo.models import ResNet50_Weights  # a real enum: refused before any download

    with pytest.raises(ValueError, match=r"'resnet50' backbone.*'convnext_tiny'"):
        _tiny_convnext_task(weights=ResNet50_Weights.SENTINEL1_ALL_MOCO, in_channels=2)


def test_xt_task_loads_a_lightning_checkpoint_path(tmp_path):
    src = _tiny_convnext_task(in_channels=2)
    path = tmp_path / "task.ckpt"
    torch.save({"hyper_parameters": dict(src.hparams), "state_dict": src.state_dict()}, path)
    torch.manual_seed(5)
    dst = _tiny_convnext_task(in_channels=2, weights=str(path))
    pairs = zip(src.model.state_dict().items(), dst.model.state_dict().values(), strict=True)
    for (name, a), b in pairs:
        assert torch.equal(a, b), name


def test_torchgeo_resnet_weights_through_an_xt_name_of_any_timm_backbone(tmp_path, monkeypatch):
    import timm

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    tiny = dict(layers=[1, 1, 1, 1])  # a ResNet-50 layout with one block per stage
    torch.manual_seed(2)
    plain = timm.create_model("resnet50", in_chans=2, **tiny)  # e.g. SENTINEL1_ALL_MOCO's layout
    weights = _weights_enum(tmp_path, plain.state_dict(), {"model": "resnet50", "in_chans": 2})
    from ..conftest import TINY_CONTEXT

    task = XTClassification(
        model="xt_resnet50_mamba",
        weights=weights,
        in_channels=2,
        region_size=64,
        model_kwargs=dict(tiny, out_indices=(1, 2, 3, 4), context_kwargs=dict(TINY_CONTEXT)),
    )
    enc = task.model.region_encoder
    assert enc.backbone_name == "resnet50" and enc.reductions == [4, 8, 16, 32]
    assert torch.equal(enc.backbone.conv1.weight, plain.conv1.weight)
    assert torch.equal(enc.backbone.layer4[0].conv2.weight, plain.layer4[0].conv2.weight)
    batch = {"image": torch.randn(2, 2, 64, 128), "label": torch.tensor([0, 1])}
    loss, changed = _train_step(task, batch)
    assert torch.isfinite(torch.tensor(loss)) and changed > 0.3
    with pytest.raises(ValueError, match="not a registered xT model"):
        XTSemanticSegmentation(backbone="xt_resnet50_mamba")  # smp's tu- needs timm names
