"""Region encoders: timm pretrained weights offline, stem adaptation, ViTs + simple pyramid.

Every pretrained route is exercised offline: the tests write tiny timm models' weights to local
files (and to a local Hugging Face cache / model folder) and check the values that arrive.
"""

from __future__ import annotations

import json
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from xt_plugins.nn.region import RegionEncoder, RegionWeightsError
from xt_plugins.nn.region_weights import plain_name

from ..conftest import TINY_BACKBONES, TINY_CONTEXT

#: test_convnext made smaller still (one block per stage).
CONVNEXT = dict(depths=(1, 1, 1, 1))
#: test_vit (embed 64, patch 16, img 160 in its pretrained cfg) with two blocks.
VIT = dict(depth=2)


def _save(model: torch.nn.Module, path) -> None:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


@pytest.fixture
def convnext_file(tmp_path):
    torch.manual_seed(1)
    model = timm.create_model("test_convnext", **CONVNEXT).eval()
    path = tmp_path / "test_convnext.safetensors"
    _save(model, path)
    return model, path


@pytest.fixture
def vit_file(tmp_path):
    torch.manual_seed(2)
    model = timm.create_model("test_vit", reg_tokens=2, **VIT).eval()
    path = tmp_path / "test_vit.safetensors"
    _save(model, path)
    return model, path


def _assert_backbone_equals(encoder: RegionEncoder, plain: torch.nn.Module, skip=()) -> int:
    ref = plain.state_dict()
    n = 0
    for key, value in encoder.backbone.state_dict().items():
        if key in skip:
            continue
        src = key if key in ref else plain_name(key)
        assert torch.equal(value, ref[src]), key
        n += 1
    return n


# ---------------------------------------------------------------- timm pretrained, hierarchical
def test_timm_pretrained_file_offline_loads_the_values(convnext_file):
    plain, path = convnext_file
    torch.manual_seed(0)
    enc = RegionEncoder(
        "test_convnext",
        region_size=64,
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path)),
        **CONVNEXT,
    ).eval()
    assert _assert_backbone_equals(enc, plain) == len(enc.backbone.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got, want = enc(x), plain.forward_intermediates(x, intermediates_only=True)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, want, strict=True))
    # normalisation from test_convnext's own pretrained cfg (0.5, not ImageNet's)
    assert enc.mean == (0.5, 0.5, 0.5) and enc.std == (0.5, 0.5, 0.5)
    assert enc.pretrained_cfg["file"] == str(path)
    # the same seed without pretrained gives other weights: the file is what arrived
    torch.manual_seed(0)
    fresh = RegionEncoder("test_convnext", region_size=64, **CONVNEXT)
    assert not torch.equal(fresh.backbone.stem_0.weight, enc.backbone.stem_0.weight)


@pytest.mark.parametrize("in_chans", [1, 2, 5])
def test_timm_pretrained_adapts_rgb_stem_like_timm(convnext_file, in_chans):
    plain, path = convnext_file
    enc = RegionEncoder(
        "test_convnext",
        region_size=64,
        in_chans=in_chans,
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path), mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6)),
        **CONVNEXT,
    )
    rgb = plain.stem[0].weight  # (24, 3, 4, 4)
    stem = enc.get_submodule(enc.first_conv)
    assert enc.first_conv == "backbone.stem_0" and stem.in_channels == in_chans
    if in_chans == 1:  # one band: the RGB filters summed
        expected = rgb.sum(1, keepdim=True)
    else:  # R, G, B, R, ... cycled and scaled by 3 / in_chans
        expected = torch.cat([rgb] * 2, 1)[:, :in_chans] * (3 / in_chans)
    assert torch.allclose(stem.weight, expected, atol=1e-7)
    # everything after the stem is the file's, untouched
    assert _assert_backbone_equals(enc, plain, skip={"stem_0.weight"}) > 10
    # per-band statistics follow the same convention
    if in_chans == 1:
        assert enc.mean == pytest.approx((0.2,)) and enc.std == pytest.approx((0.5,))
    elif in_chans == 2:
        assert enc.mean == (0.1, 0.2) and enc.std == (0.4, 0.5)
    else:
        assert enc.mean == (0.1, 0.2, 0.3, 0.1, 0.2) and enc.std == (0.4, 0.5, 0.6, 0.4, 0.5)
    assert enc(torch.randn(1, in_chans, 64, 64))[-1].shape == (1, 64, 2, 2)


def test_region_size_defaults_from_fixed_size_pretrained_cfg():
    swin = RegionEncoder("swinv2_tiny_window16_256", **TINY_BACKBONES["swinv2_tiny"])
    hiera = RegionEncoder("hiera_base_224", **TINY_BACKBONES["hiera_base"])
    convnext = RegionEncoder("convnext_tiny", **TINY_BACKBONES["convnext_tiny"])
    assert (swin.region_size, hiera.region_size, convnext.region_size) == (256, 224, 256)
    assert RegionEncoder("test_vit", **VIT).region_size == 160  # test_vit's input_size


@pytest.mark.parametrize("family", [*sorted(TINY_BACKBONES), "vit"])
def test_every_family_returns_nchw_levels_at_strides_4_to_32(family):
    if family == "vit":
        enc = RegionEncoder("test_vit", region_size=64, **VIT)
    else:
        name = {"swinv2_tiny": "swinv2_tiny_window16_256", "hiera_base": "hiera_base_224"}
        enc = RegionEncoder(name.get(family, family), region_size=64, **TINY_BACKBONES[family])
    assert enc.reductions == [4, 8, 16, 32]
    with torch.no_grad():
        out = enc(torch.randn(2, 3, 64, 64))
    for f, c, s in zip(out, enc.channels, enc.reductions, strict=True):
        assert f.shape == (2, c, 64 // s, 64 // s) and f.is_contiguous()


# ---------------------------------------------------------------- ViT + simple feature pyramid
def test_vit_tokens_become_a_pyramid_without_prefix_tokens(vit_file):
    plain, path = vit_file
    enc = RegionEncoder(
        "test_vit",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path)),
        reg_tokens=2,
        **VIT,
    ).eval()
    assert enc.is_vit and enc.region_size == 160  # from the pretrained cfg
    assert enc.backbone.num_prefix_tokens == 3  # cls + 2 registers
    assert _assert_backbone_equals(enc, plain) == len(enc.backbone.state_dict())
    assert enc.mean == (0.5, 0.5, 0.5) and enc.std == (0.5, 0.5, 0.5)
    assert enc.channels == [16, 32, 64, 64] and enc.reductions == [4, 8, 16, 32]
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        levels = enc(x)
        tokens = plain.forward_features(x)  # (2, 3 + 100, 64), final norm applied
    grid = tokens[:, 3:].reshape(2, 10, 10, 64).permute(0, 3, 1, 2)
    assert [tuple(f.shape) for f in levels] == [
        (2, 16, 40, 40),
        (2, 32, 20, 20),
        (2, 64, 10, 10),
        (2, 64, 5, 5),
    ]
    assert torch.allclose(levels[2], grid, atol=1e-5)  # stride 16: the foundation features
    assert torch.allclose(levels[3], F.max_pool2d(grid, 2), atol=1e-5)  # stride 32


def test_vit_pyramid_is_learnable_and_pyramid_dim_projects():
    enc = RegionEncoder("test_vit", region_size=64, **VIT)
    out = enc(torch.randn(1, 3, 64, 64))
    (out[0].square().mean() + out[1].square().mean()).backward()
    for module in (enc.pyramid.up4[0], enc.pyramid.up4[3], enc.pyramid.up8):
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0
    proj = RegionEncoder("test_vit", region_size=64, pyramid_dim=24, **VIT)
    assert proj.channels == [24, 24, 24, 24]
    assert [f.shape[1] for f in proj(torch.randn(1, 3, 64, 64))] == [24] * 4
    with pytest.raises(ValueError, match="plain ViTs only"):
        RegionEncoder("convnext_tiny", pyramid_dim=24, **TINY_BACKBONES["convnext_tiny"])


def test_vit_patch14_map_is_resampled_to_the_stride16_grid():
    kw = dict(patch_size=14, embed_dim=32, depth=1, num_heads=2)
    enc = RegionEncoder("test_vit", region_size=224, **kw).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        levels = enc(x)
        (tokens,) = enc.backbone.forward_intermediates(
            x, indices=1, norm=True, intermediates_only=True
        )
    assert enc.patch_stride == 14 and tokens.shape[-2:] == (16, 16)
    assert [f.shape[-1] for f in levels] == [56, 28, 14, 7]
    want = F.interpolate(tokens, size=(14, 14), mode="bilinear", antialias=True)
    assert torch.allclose(levels[2], want, atol=1e-6)


def test_vit_rgb_patch_embed_adapted_to_two_bands(vit_file):
    plain, path = vit_file
    enc = RegionEncoder(
        "test_vit",
        in_chans=2,
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path)),
        reg_tokens=2,
        **VIT,
    )
    assert enc.first_conv == "backbone.patch_embed.proj"
    rgb = plain.patch_embed.proj.weight
    assert torch.allclose(enc.backbone.patch_embed.proj.weight, rgb[:, :2] * 1.5, atol=1e-7)
    assert enc.mean == (0.5, 0.5)


def test_vit_weights_path_matches_timms_route_at_another_region_size(vit_file):
    plain, path = vit_file
    # weights=PATH (load_region_weights + the ViT family's filter) vs timm's own loader, both
    # resampling the 10 x 10 position table of the 160 px file to 4 x 4 for 64 px regions
    ours = RegionEncoder("test_vit", region_size=64, weights=path, reg_tokens=2, **VIT)
    timms = RegionEncoder(
        "test_vit",
        region_size=64,
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path)),
        reg_tokens=2,
        **VIT,
    )
    assert ours.backbone.pos_embed.shape == (1, 4 * 4 + 3, 64)
    for (k, a), b in zip(
        ours.backbone.state_dict().items(), timms.backbone.state_dict().values(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-6), k
    assert torch.equal(ours.backbone.blocks[1].mlp.fc2.weight, plain.blocks[1].mlp.fc2.weight)
    state = plain.state_dict()
    state.pop("blocks.0.attn.qkv.weight")
    torch.save(state, path.with_suffix(".pt"))
    with pytest.raises(RegionWeightsError, match=r"test_vit\.pt(.|\n)*blocks\.0\.attn\.qkv"):
        RegionEncoder("test_vit", weights=path.with_suffix(".pt"), reg_tokens=2, **VIT)


def test_vit_region_size_must_fit_the_pyramid():
    with pytest.raises(ValueError, match=r"test_vit: region_size 48 must be a multiple of 32"):
        RegionEncoder("test_vit", region_size=48, **VIT)


# ---------------------------------------------------------------- foundation models by name
def _vit_folder(folder, model) -> None:
    """A Hugging Face timm model folder (config.json + model.safetensors), as on the Hub."""
    folder.mkdir(parents=True)
    config = {
        "architecture": "test_vit",
        "num_classes": 0,
        "model_args": {"depth": 1, "reg_tokens": 4, "img_size": 64},
        "pretrained_cfg": {
            "input_size": [3, 64, 64],
            "fixed_input_size": True,
            "mean": [0.7, 0.58, 0.7],
            "std": [0.21, 0.23, 0.18],
            "num_classes": 0,
        },
    }
    (folder / "config.json").write_text(json.dumps(config))
    _save(model, folder / "model.safetensors")


@pytest.fixture
def foundation_model():
    torch.manual_seed(3)
    return timm.create_model("test_vit", depth=1, reg_tokens=4, img_size=64, num_classes=0)


def _check_foundation(enc: RegionEncoder, plain: torch.nn.Module) -> None:
    assert enc.is_vit and enc.region_size == 64  # from config.json
    assert enc.mean == (0.7, 0.58, 0.7) and enc.std == (0.21, 0.23, 0.18)
    assert enc.backbone.num_prefix_tokens == 5
    assert _assert_backbone_equals(enc, plain) == len(enc.backbone.state_dict())
    assert [f.shape[-1] for f in enc(torch.randn(1, 3, 64, 64))] == [16, 8, 4, 2]


def test_local_dir_foundation_model_offline(tmp_path, foundation_model):
    _vit_folder(tmp_path / "UNI", foundation_model)
    enc = RegionEncoder(f"local-dir:{tmp_path / 'UNI'}", pretrained=True)
    _check_foundation(enc, foundation_model)


def test_hf_hub_name_goes_through_timm_and_the_hub_cache(tmp_path, monkeypatch, foundation_model):
    """``hf_hub:ORG/NAME`` resolved by timm + huggingface_hub, here from a local cache offline."""
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--tiny-pathology-vit"
    _vit_folder(repo / "snapshots" / commit, foundation_model)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as HF_HUB_OFFLINE=1 does
    enc = RegionEncoder(
        "hf_hub:org/tiny-pathology-vit", pretrained=True, cache_dir=str(tmp_path / "hub")
    )
    _check_foundation(enc, foundation_model)


def test_hub_failure_is_one_line_naming_the_model_and_the_routes(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # nothing cached, no network
    with pytest.raises(RegionWeightsError) as err:
        RegionEncoder("hf_hub:org/not-cached", pretrained=True, cache_dir=str(tmp_path))
    message = str(err.value)
    assert "\n" not in message and message.startswith("hf_hub:org/not-cached: cannot fetch")
    assert "HF_TOKEN" in message and "local-dir:FOLDER" in message


def test_missing_overlay_file_names_the_file(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors: pretrained weights file"):
        RegionEncoder(
            "test_convnext", pretrained=True, pretrained_cfg_overlay=dict(file=str(missing))
        )


# ---------------------------------------------------------------- through the xT model
def test_vit_region_encoder_in_an_xt_model_end_to_end(vit_file):
    import xt_plugins

    plain, path = vit_file
    torch.manual_seed(0)
    model = xt_plugins.create_model(
        "test_vit",
        "mamba",
        region_size=64,
        num_classes=3,
        pretrained_region=True,
        pretrained_cfg_overlay=dict(file=str(path)),
        reg_tokens=2,
        context_kwargs=dict(TINY_CONTEXT),
        **VIT,
    ).eval()
    enc = model.region_encoder
    assert enc.is_vit
    assert torch.equal(enc.backbone.blocks[0].attn.qkv.weight, plain.blocks[0].attn.qkv.weight)
    x = torch.randn(1, 3, 150, 100)
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_intermediates(x, intermediates_only=True)
    assert logits.shape == (1, 3) and torch.isfinite(logits).all()
    assert [tuple(f.shape[1:]) for f in feats] == [
        (c, math.ceil(150 / s), math.ceil(100 / s))
        for c, s in zip((16, 32, 64, 64), (4, 8, 16, 32), strict=True)
    ]
