"""Official xT checkpoints: reference logits, the config / key mapping, and the timm tags."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import timm
import torch

import xt_plugins
from xt_plugins.nn.official import (
    OFFICIAL_RELEASES,
    OfficialCheckpointError,
    OfficialXT,
    load_official_xt,
    official_model_kwargs,
    parse_official_config,
    sincos_table,
)

from ..conftest import SHARED_FIXTURES
from .test_region_weights import _Payload, _write

OFFICIAL = SHARED_FIXTURES / "official_xt"
STEMS = (
    "official_xt_swinv2tiny24_hyper_seed0_512px",
    "official_xt_swinv2tiny24_naive_seed0_512px",
    "official_xt_swinv2tiny24_hyper_icp128_seed0_512px",
)
#: Tiny region encoder and context head (the fixtures' sizes), for tests that write weights.
TINY_SWIN = dict(embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
TINY = dict(hidden_size=128, **TINY_SWIN)


def _fixture(stem: str) -> tuple[dict, dict[str, torch.Tensor]]:
    if not OFFICIAL.is_dir():
        pytest.skip(f"official xT fixtures not found at {OFFICIAL}")
    from safetensors.torch import load_file

    config = json.loads((OFFICIAL / f"{stem}.json").read_text())["official_config"]
    return config, load_file(str(OFFICIAL / f"{stem}_io.safetensors"))


@pytest.mark.parametrize("stem", STEMS)
def test_fixture_logits_match_official_code(stem):
    config, io = _fixture(stem)
    model = load_official_xt(OFFICIAL / f"{stem}.ckpt", config)
    assert not model.training
    with torch.no_grad():
        logits = model(io["input"])
    assert logits.shape == io["logits"].shape == (2, 7)
    assert (logits - io["logits"]).abs().max().item() < 1e-4
    # the fixture's parameter count, and timm's conventions on the loaded model
    assert sum(p.numel() for p in model.parameters()) == 1250515
    assert model.pretrained_cfg["classifier"] == "head.fc"
    with torch.no_grad():
        feats = model.forward_features(io["input"])
        assert feats.shape == (2, 128)
        assert torch.allclose(model.forward_head(feats), logits)
        assert model.forward_head(feats, pre_logits=True).shape == (2, 128)


@pytest.mark.parametrize(
    ("stem", "wrong"),
    [
        # causal hyper attention vs the same weights without the mask
        (STEMS[0], dict(attention_method="naive")),
        # 128 one-channel heads, no mask vs causal single-head attention
        (STEMS[1], dict(attention_method="hyper")),
        # windows of 128 tokens (stride 64, mean of cls outputs) vs every token at once
        (STEMS[2], dict(in_context_patches=-1)),
    ],
)
def test_fixtures_tell_the_official_subtleties_apart(stem, wrong):
    """Each fixture rejects the nearest wrong reading of the official code."""
    config, io = _fixture(stem)
    model = load_official_xt(OFFICIAL / f"{stem}.ckpt", config, **wrong)
    with torch.no_grad():
        assert (model(io["input"]) - io["logits"]).abs().max().item() > 1e-3


def test_config_path_yaml_and_defaults(tmp_path):
    # the layout of config/swin-t/swin_v2_tiny_1e-4_hyper_512_256.yaml (trimmed)
    yaml_text = """
base_configs:
  - config/base.yaml
data:
  crop_size: 512
  num_classes: 284
model:
  name: xT
  num_classes: ${data.num_classes}
  mlp_ratio: 4
  backbone_class: swinv2_tiny_window16_256_timm
  backbone:
    input_size: 256
    input_dim: 3
  cls_head: xl
  context:
    classification_mode: on
    tiling: naive_two_stream
    n_layer: 2
"""
    path = tmp_path / "swin_v2_tiny_1e-4_hyper_512_256.yaml"
    path.write_text(yaml_text)
    cfg = parse_official_config(path)
    assert cfg["num_classes"] == 284 and cfg["region_size"] == 256 and cfg["cls_head"] == "xl"
    assert cfg["image_size"] == 512  # data.crop_size
    # ContextEncoderConfig defaults fill what the YAML leaves out
    assert cfg["context"] == dict(
        n_layer=2, hidden_size=768, attention_method="hyper", in_context_patches=-1
    )
    release = OFFICIAL_RELEASES["xt_swinv2_tiny_hyper.inat_reptilia_512"]
    assert official_model_kwargs(path) == official_model_kwargs(release.config)
    with pytest.raises(OfficialCheckpointError, match=re.escape(str(tmp_path / "x.yaml"))):
        (tmp_path / "x.yaml").write_text("data: {}\n")
        parse_official_config(tmp_path / "x.yaml")


def test_sincos_table_is_the_official_mae_table():
    """Channels [:D/2] encode the column, [D/2:] the row, each as sin then cos."""
    table = sincos_table(8, 3, 5)  # (15, 8)
    omega = torch.tensor([1.0, 0.01])  # 10000 ** (-k / 2), k = 0, 1
    row, col = 1, 4  # token 1 * 5 + 4
    expected = torch.cat(
        [(col * omega).sin(), (col * omega).cos(), (row * omega).sin(), (row * omega).cos()]
    )
    assert torch.allclose(table[row * 5 + col], expected)


# ----------------------------------------------------------------------------- official layout
def _official_decoder_keys(head: str, n_layer: int) -> list[str]:
    """``LLMClassificationDecoder``'s parameter names, written out from the official modules."""
    keys = ["decoder.cls_token", "decoder.input_proj.weight", "decoder.input_proj.bias"]
    for i in range(n_layer):
        p = f"decoder.layers.{i}."
        if head == "mamba":  # Block(mixer=mamba_ssm.Mamba, norm=LayerNorm)
            keys += [
                p + k
                for k in (
                    "mixer.A_log",
                    "mixer.D",
                    "mixer.in_proj.weight",
                    "mixer.conv1d.weight",
                    "mixer.conv1d.bias",
                    "mixer.x_proj.weight",
                    "mixer.dt_proj.weight",
                    "mixer.dt_proj.bias",
                    "mixer.out_proj.weight",
                    "norm.weight",
                    "norm.bias",
                )
            ]
        else:  # LLMLayer(LLMAttention / ViTAttention, LlamaRMSNorm x 2, LlamaMLP)
            keys += [
                p + k
                for k in (
                    "attn.qkv.weight",
                    "attn.qkv.bias",
                    "attn.proj.weight",
                    "attn.proj.bias",
                    "input_layernorm.weight",
                    "post_attention_layernorm.weight",
                    "mlp.gate_proj.weight",
                    "mlp.up_proj.weight",
                    "mlp.down_proj.weight",
                )
            ]
    return (
        keys
        + ["decoder.cls.0.weight", "decoder.cls.0.bias", "decoder.cls.1.weight"]
        + ["decoder.cls.1.bias"]
    )


def _official_checkpoint(model: OfficialXT, swin: str, head: str, n_layer: int, **swin_kw) -> dict:
    """A checkpoint in the released layout holding ``model``'s weights under official names.

    The backbone names come from timm's own Swin-V2 feature extractor (what the official
    ``SwinWrapper`` holds as ``encoder.model``), the head names from the official modules; they
    are paired with our tensors by module order, shapes checked, so the key mapping under test
    is not used to make its own input.
    """
    backbone = timm.create_model(swin, features_only=True, img_size=256, **swin_kw)
    official = [f"encoder.model.{k}" for k in backbone.state_dict()]
    official += _official_decoder_keys(head, n_layer)
    ours = list(model.state_dict().items())
    assert len(official) == len(ours)
    for off, (key, _value) in zip(official, ours, strict=True):
        assert off.rpartition(".")[2] == key.rpartition(".")[2], (off, key)
    state = {f"module.{k}": v for k, (_, v) in zip(official, ours, strict=True)}
    return {
        "epoch": 99,
        "state_dict": state,
        "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]},
        "metrics": {"accuracy_top1": 0.6},
    }


@pytest.mark.parametrize("head", ["hyper", "mamba"])
def test_timm_tag_loads_a_local_official_checkpoint(tmp_path, head):
    """``pretrained_cfg_overlay=dict(file=...)``: the file's weights arrive, values compared."""
    name = f"xt_swinv2_tiny_{head}.inat_reptilia_512"
    n_layer = OFFICIAL_RELEASES[name].n_layer
    torch.manual_seed(0)
    source = OfficialXT("swinv2_tiny_window16_256", n_layer=n_layer, attention_method=head, **TINY)
    path = tmp_path / "swin-t-release.ckpt"
    torch.save(
        _official_checkpoint(source, "swinv2_tiny_window16_256", head, n_layer, **TINY_SWIN), path
    )

    model = timm.create_model(
        name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **TINY
    ).eval()
    assert isinstance(model, OfficialXT)
    assert model.pretrained_cfg["tag"] == "inat_reptilia_512"
    assert model.pretrained_cfg["file"] == str(path)
    got, ref = model.state_dict(), source.state_dict()
    assert got.keys() == ref.keys()
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    x = torch.randn(1, 3, 512, 512)
    with torch.no_grad():
        assert torch.equal(model(x), source.eval()(x))
    # the same file through the one-call loader, and a new head for fine-tuning through timm
    loaded = load_official_xt(path, OFFICIAL_RELEASES[name].config, **TINY)
    assert torch.equal(loaded.state_dict()["head.fc.weight"], ref["head.fc.weight"])
    tuned = timm.create_model(
        name,
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path)),
        num_classes=5,
        in_chans=2,
        **TINY,
    )
    assert tuned.get_classifier().out_features == 5
    assert torch.equal(tuned.state_dict()["context.cls_token"], ref["context.cls_token"])
    stem = "region_encoder.backbone.patch_embed.proj.weight"
    assert tuned.state_dict()[stem].shape[1] == 2  # adapted by timm from the RGB stem


def test_timm_tag_downloads_through_the_hub_route(tmp_path, monkeypatch):
    """``pretrained=True``: timm's Hugging Face route (offline here, from a cache the test lays
    out as ``huggingface_hub`` does) hands the filter the whole checkpoint; its weights arrive."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # never the network
    name = "xt_swinv2_tiny_hyper.inat_reptilia_512"
    cfg = timm.models.get_pretrained_cfg(name)
    assert cfg.hf_hub_id == "bair-climate-initiative/xt"
    assert cfg.hf_hub_filename == "swin-t/weights/swin-t-hyper-512-256-top1.ckpt"
    torch.manual_seed(1)
    source = OfficialXT("swinv2_tiny_window16_256", **TINY)
    repo, revision = tmp_path / "models--bair-climate-initiative--xt", "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    path = repo / "snapshots" / revision / cfg.hf_hub_filename
    path.parent.mkdir(parents=True)
    torch.save(
        _official_checkpoint(source, "swinv2_tiny_window16_256", "hyper", 2, **TINY_SWIN), path
    )
    model = timm.create_model(name, pretrained=True, cache_dir=str(tmp_path), **TINY)
    got, ref = model.state_dict(), source.state_dict()
    assert all(torch.equal(got[k], ref[k]) for k in ref)


#: The official README's parameter counts (millions) of the released models.
README_PARAMS = {
    "xt_swinv2_tiny_hyper.inat_reptilia_512": 47,
    "xt_swinv2_tiny_mamba.inat_reptilia_512": 44,
    "xt_swinv2_small_hyper.inat_reptilia_512": 69,
    "xt_swinv2_base_hyper.inat_reptilia_512": 107,
    "xt_swinv2_base_mamba.inat_reptilia_512": 103,
    "xt_swinv2_large_hyper.inat_reptilia_512": 215,
    "xt_swinv2_large_mamba.inat_reptilia_512": 212,
}


def test_full_size_release_tags_build_and_load_on_meta(tmp_path):
    """Every full-size tag builds; Swin-L + Mamba loads an official-layout file through timm."""
    assert set(README_PARAMS) <= set(timm.list_pretrained("xt_*"))
    with torch.device("meta"):
        for name, millions in README_PARAMS.items():
            model = timm.create_model(name)
            assert isinstance(model, OfficialXT), name
            n = sum(p.numel() for p in model.parameters()) / 1e6
            assert abs(n - millions) < 1.0, (name, n)
        # full size, official names, tensors without data: the whole key / shape mapping
        name = "xt_swinv2_large_mamba.inat_reptilia_512"
        source = timm.create_model(name)
        ckpt = _official_checkpoint(source, "swinv2_large_window12to16_192to256", "mamba", 4)
    path = tmp_path / "swin-l-mamba-512-256-top1.ckpt"
    torch.save(ckpt, path)
    with torch.device("meta"):
        model = timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))
        )
    assert model.state_dict().keys() == source.state_dict().keys()


def test_untagged_names_still_build_this_projects_model():
    for arch in xt_plugins.model_names():
        cfg = timm.models.get_pretrained_cfg(arch)
        assert cfg.tag is None and not cfg.has_weights and cfg.num_classes == 1000, arch
    model = timm.create_model(
        "xt_swinv2_tiny_hyper", num_classes=3, region_size=64, window_size=4, **TINY_SWIN
    )
    assert isinstance(model, xt_plugins.XTModel)
    with torch.device("meta"):
        large = timm.create_model("xt_swinv2_large_mamba")
    assert isinstance(large, xt_plugins.XTModel)
    assert large.region_encoder.backbone_name == "swinv2_large_window12to16_192to256"


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": _Payload(marker)}}, path)  # a zip .ckpt like the releases
    config = OFFICIAL_RELEASES["xt_swinv2_tiny_hyper.inat_reptilia_512"].config
    with pytest.raises(OfficialCheckpointError) as err:
        load_official_xt(path, config, **TINY)
    assert str(path) in str(err.value) and "weights_only=True" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(RuntimeError, match="weights_only=True blocked"):  # timm's loader
        timm.create_model(
            "xt_swinv2_tiny_hyper.inat_reptilia_512",
            pretrained=True,
            pretrained_cfg_overlay=dict(file=str(path)),
            **TINY,
        )
    assert not marker.exists()


@pytest.mark.parametrize("layout", ["zip", "pickle5"])
def test_refused_pickle_is_its_reason_in_one_line_and_prints_nothing(tmp_path, capfd, layout):
    """torch's eight-line refusal is cut to its reason; its pickle-protocol warning is muted."""
    marker = tmp_path / "ran"
    path = tmp_path / "evil.ckpt"
    reason = _write(path, layout, marker)  # torch.save's zip as the releases, or a raw pickle
    config = OFFICIAL_RELEASES["xt_swinv2_tiny_hyper.inat_reptilia_512"].config
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(OfficialCheckpointError) as err:
            load_official_xt(path, config, **TINY)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and "weights_only=True" in msg
    assert re.search(f"\\(({reason})\\)", msg), msg
    assert "\n" not in msg and "\x1b" not in msg and "add_safe_globals" not in msg, msg
    assert err.value.__suppress_context__  # torch's text is not chained into the traceback
    assert [str(w.message) for w in caught] == []
    assert capfd.readouterr().err == ""
    assert not marker.exists()


def test_mismatched_checkpoint_is_one_line_naming_the_file(tmp_path):
    torch.manual_seed(0)
    source = OfficialXT("swinv2_tiny_window16_256", **TINY)
    path = tmp_path / "two-layers.ckpt"
    torch.save(
        _official_checkpoint(source, "swinv2_tiny_window16_256", "hyper", 2, **TINY_SWIN), path
    )
    config = OFFICIAL_RELEASES["xt_swinv2_tiny_hyper.inat_reptilia_512"].config
    with pytest.raises(OfficialCheckpointError) as err:
        load_official_xt(path, config, n_layer=1, **TINY)
    msg = str(err.value)
    assert msg.startswith(str(path)) and "\n" not in msg
    assert "unexpected context.layers.1." in msg
    with pytest.raises(OfficialCheckpointError, match="shape"):
        load_official_xt(path, config, **TINY_SWIN)  # hidden_size 768 != 128 in the file
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_official_xt(tmp_path / "missing.ckpt", config)


def test_input_must_be_a_grid_of_regions():
    model = OfficialXT("swinv2_tiny_window16_256", num_classes=3, **TINY).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 256, 512)).shape == (1, 3)  # 1 x 2 regions
        with pytest.raises(ValueError, match="not a grid of 256-px regions"):
            model(torch.randn(1, 3, 300, 256))
    model.reset_classifier(0)
    assert model.get_classifier().__class__.__name__ == "Identity"


def test_public_export():
    assert xt_plugins.load_official_xt is load_official_xt


def test_mamba_blocks_scan_as_officially():
    """Even layers scan right to left, odd left to right; the residual is the normalised input."""
    torch.manual_seed(0)
    model = OfficialXT("swinv2_tiny_window16_256", attention_method="mamba", n_layer=2, **TINY)
    first, second = model.context.layers
    assert first.reverse and not second.reverse
    x = torch.randn(1, 9, 128)
    bumped = x.clone()
    bumped[:, 0] += torch.randn(128)  # (a constant shift would be normalised away)
    with torch.no_grad():
        # right to left: token 0 is seen by no later token; the last one reaches token 0
        assert torch.allclose(first(x)[:, 1:], first(bumped)[:, 1:])
        assert not torch.allclose(second(x)[:, 1:], second(bumped)[:, 1:])
        last = x.clone()
        last[:, -1] += torch.randn(128)
        assert not torch.allclose(first(x)[:, 0], first(last)[:, 0])
        second.mixer.out_proj.weight.zero_()
        assert torch.allclose(second(x), torch.nn.functional.layer_norm(x, (128,)), atol=1e-6)


def test_naive_cls_head_is_the_official_classification_decoder(tmp_path):
    """``cls_head: naive`` (the nonxl baselines): GAP, Linear, GELU, LayerNorm, Linear."""
    torch.manual_seed(0)
    source = OfficialXT("swinv2_tiny_window16_256", cls_head="naive", num_classes=4, **TINY_SWIN)
    backbone = {
        f"module.encoder.model.{k[len('region_encoder.backbone.') :]}": v
        for k, v in source.state_dict().items()
        if k.startswith("region_encoder.")
    }
    c = source.region_encoder.channels[-1]
    head = {  # ClassificationDecoder.layers = Sequential(Linear, GELU, LayerNorm, Linear)
        "module.decoder.layers.0.weight": torch.randn(4 * c, c) * 0.05,
        "module.decoder.layers.0.bias": torch.randn(4 * c) * 0.05,
        "module.decoder.layers.2.weight": torch.rand(4 * c) + 0.5,
        "module.decoder.layers.2.bias": torch.randn(4 * c) * 0.05,
        "module.decoder.layers.3.weight": torch.randn(4, 4 * c) * 0.05,
        "module.decoder.layers.3.bias": torch.randn(4) * 0.05,
    }
    path = tmp_path / "nonxl.ckpt"
    torch.save({"epoch": 1, "state_dict": {**head, **backbone}}, path)
    config = dict(
        backbone_class="swinv2_tiny_window16_256_timm",
        backbone_kwargs=TINY_SWIN,
        region_size=256,
        num_classes=4,
        cls_head="naive",
    )
    model = load_official_xt(path, config)
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        pooled = source.eval().forward_regions(x).mean(dim=(-2, -1))  # same backbone weights
        h = torch.nn.functional.linear(
            pooled, *(head[f"module.decoder.layers.0.{p}"] for p in ("weight", "bias"))
        )
        h = torch.nn.functional.gelu(h)
        h = torch.nn.functional.layer_norm(
            h,
            (4 * c,),
            head["module.decoder.layers.2.weight"],
            head["module.decoder.layers.2.bias"],
        )
        expected = torch.nn.functional.linear(
            h, head["module.decoder.layers.3.weight"], head["module.decoder.layers.3.bias"]
        )
        assert torch.allclose(model(x), expected, atol=1e-5)


def test_xt_task_options_reach_the_official_model():
    """The xT tasks pass their options to every xT name: defaults pass, others are an error."""
    name = "xt_swinv2_tiny_hyper.inat_reptilia_512"
    opts = dict(region_size=256, context_pool=None, grad_ratio=1.0, region_chunk=2)
    with torch.device("meta"):
        model = timm.create_model(name, checkpoint_regions=False, **opts)
    assert isinstance(model, OfficialXT) and model.region_chunk == 2
    with pytest.raises(ValueError, match="grad_ratio=0.5 does not apply"):
        with torch.device("meta"):
            timm.create_model(name, grad_ratio=0.5)
