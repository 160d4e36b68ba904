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


# ---------------------------------------------------------------------------- timm's conventions
def _tiny(name: str, **kwargs):
    backbone = name[3:].rpartition("_")[0]
    torch.manual_seed(0)
    kw = dict(region_size=128, context_kwargs=TINY_CONTEXT, **TINY_BACKBONES[backbone])
    return timm.create_model(name, **{**kw, **kwargs})


@pytest.mark.parametrize("backbone", sorted(TINY_BACKBONES))
def test_default_cfg_holds_timms_assertions(backbone):
    # what timm's test_model_default_cfgs asserts, at the cfg's own input size
    model = _tiny(f"xt_{backbone}_mamba", num_classes=5).eval()
    cfg = model.pretrained_cfg
    x = torch.randn(1, *cfg["input_size"])
    state = model.state_dict()
    assert cfg["classifier"] + ".weight" in state and cfg["first_conv"] + ".weight" in state
    with torch.no_grad():
        assert model.forward_features(x).shape[-2:] == cfg["pool_size"]
        model.reset_classifier(0)
        assert model(x).shape == (1, model.num_features)
        model.reset_classifier(0, "")
        assert model(x).shape[-2:] == cfg["pool_size"] and model(x).ndim == 4


def test_first_conv_and_pool_size_of_every_name():
    with torch.device("meta"):
        for name in xt_plugins.model_names():
            model = timm.create_model(name)
            cfg = timm.models.get_pretrained_cfg(name)
            assert cfg.pool_size == (32, 32) and cfg.input_size == (3, 1024, 1024)
            assert cfg.first_conv == model.first_conv_name(), name  # static table is right
            assert cfg.first_conv + ".weight" in model.state_dict(), name


@pytest.mark.parametrize("backbone", sorted(TINY_BACKBONES))
def test_forward_intermediates_holds_timms_assertions(backbone):
    import math

    model = _tiny(f"xt_{backbone}_hyper").eval()
    x = torch.randn(2, 3, 200, 150)
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))
    with torch.no_grad():
        for fmt, (c_ax, h_ax, w_ax) in (("NCHW", (1, 2, 3)), ("NHWC", (3, 1, 2))):
            final, feats = model.forward_intermediates(x, output_fmt=fmt)
            only = model.forward_intermediates(x, output_fmt=fmt, intermediates_only=True)
            assert len(feats) == len(info.channels()) == len(only)
            for ch, red, f, o in zip(info.channels(), info.reduction(), feats, only, strict=True):
                assert f.shape[c_ax] == ch and f.shape[0] == 2
                assert f.shape[h_ax] <= math.ceil(200 / red) and f.shape[w_ax] <= math.ceil(
                    150 / red
                )
                assert torch.isfinite(f).all() and torch.equal(f, o)
            assert final.shape[1] == info.channels()[-1]
        getter = _tiny(f"xt_{backbone}_hyper", features_only=True).eval()
        ref = model.forward_intermediates(x, intermediates_only=True)
        for a, b in zip(getter(x), ref, strict=True):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("feature_cls", ["hook", "list", "dict"])
def test_features_only_hook_list_dict(feature_cls):
    net = _tiny("xt_convnext_tiny_txl", features_only=True, feature_cls=feature_cls).eval()
    x = torch.randn(1, 3, 200, 150)
    with torch.no_grad():
        feats = net(x)
        body = net.body  # the hooked XTModel itself
        ref = body.forward_intermediates(x, intermediates_only=True)
    if feature_cls == "dict":
        assert list(feats) == [f"feature_taps.{i}" for i in range(4)]
        feats = list(feats.values())
    assert net.feature_info.reduction() == [4, 8, 16, 32]
    assert [f.shape[1] for f in feats] == net.feature_info.channels()
    for a, b in zip(feats, ref, strict=True):
        torch.testing.assert_close(a, b)


def test_user_feature_cfg_updates_the_factorys_own():
    net = _tiny("xt_convnext_tiny_none", features_only=True, feature_cfg=dict(out_indices=(1, 3)))
    assert net.feature_info.reduction() == [8, 32]
    assert [f.shape[1] for f in net(torch.randn(1, 3, 128, 128))] == net.feature_info.channels()
