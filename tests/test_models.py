"""timm registry, smp and TorchGeo integration of the registered xT models."""

import pytest
import timm
import torch

import xt_plugins

from .conftest import TINY_BACKBONES, TINY_CONTEXT


def test_every_name_is_registered_with_timm():
    names = set(timm.list_models("xt_*"))
    expected = {
        f"xt_{b}_{c}"
        for b in (
            "swinv2_tiny",
            "swinv2_small",
            "swinv2_base",
            "convnext_tiny",
            "convnext_base",
            "hiera_base",
        )
        for c in ("none", "txl", "hyper", "mamba")
    }
    assert expected <= names
    assert set(xt_plugins.model_names()) == expected


@pytest.mark.parametrize("backbone", sorted(TINY_BACKBONES))
def test_timm_create_model_classification(backbone):
    model = timm.create_model(
        f"xt_{backbone}_mamba",
        num_classes=4,
        in_chans=2,
        pretrained=False,
        region_size=64,
        context_kwargs=TINY_CONTEXT,
        **TINY_BACKBONES[backbone],
    ).eval()
    assert model.pretrained_cfg["classifier"] == "head.fc"
    x = torch.randn(1, 2, 100, 90)
    with torch.no_grad():
        assert model(x).shape == (1, 4)
        feats = model.forward_features(x)
        assert feats.shape == (1, model.num_features, 4, 3)
        assert model.forward_head(feats, pre_logits=True).shape == (1, model.num_features)
    model.reset_classifier(7)
    assert model.get_classifier().out_features == 7


@pytest.mark.parametrize("backbone", sorted(TINY_BACKBONES))
def test_features_only_reductions_and_meta_device(backbone):
    kw = dict(region_size=64, context_kwargs=TINY_CONTEXT, **TINY_BACKBONES[backbone])
    model = timm.create_model(f"xt_{backbone}_txl", features_only=True, in_chans=3, **kw)
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert model.feature_info.channels() == model.model.region_encoder.channels
    feats = model(torch.randn(1, 3, 128, 192))
    assert [tuple(f.shape[-2:]) for f in feats] == [(32, 48), (16, 24), (8, 12), (4, 6)]
    with torch.device("meta"):  # smp builds a throwaway copy on the meta device first
        meta = timm.create_model(f"xt_{backbone}_mamba", features_only=True)
    assert meta.feature_info.reduction() == [4, 8, 16, 32]


def test_full_size_names_build_on_meta():
    with torch.device("meta"):
        for name in xt_plugins.model_names():
            model = timm.create_model(name, features_only=True)
            assert model.feature_info.reduction() == [4, 8, 16, 32], name


def test_smp_unet_with_xt_encoder():
    smp = pytest.importorskip("segmentation_models_pytorch")
    net = smp.Unet(
        encoder_name="tu-xt_swinv2_tiny_txl", encoder_weights=None, in_channels=2, classes=2
    ).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 2, 256, 512))
    assert out.shape == (1, 2, 256, 512)


def test_torchgeo_stock_classification_trains():
    from torchgeo.trainers import ClassificationTask

    task = ClassificationTask(
        model="xt_convnext_tiny_mamba", in_channels=3, num_classes=2, loss="ce", lr=1e-3
    )
    assert isinstance(task.model, xt_plugins.XTModel)
    opt = task.configure_optimizers()["optimizer"]
    batch = {"image": torch.randn(2, 3, 256, 512), "label": torch.tensor([0, 1])}
    task.train()
    first = next(task.model.region_encoder.parameters()).detach().clone()
    loss = task.training_step(batch, 0)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert not torch.equal(first, next(task.model.region_encoder.parameters()))
