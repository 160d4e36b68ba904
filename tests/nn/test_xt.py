import math

import pytest
import timm
import torch

import xt_plugins
from xt_plugins.nn.region import RegionWeightsError
from xt_plugins.nn.tokenize import RegionGrid

from ..conftest import TINY_BACKBONES, TINY_CONTEXT, tiny_model

CONTEXTS = ["none", "txl", "hyper", "mamba"]


@pytest.mark.parametrize("context", CONTEXTS)
def test_odd_image_shapes_every_context(context):
    model = tiny_model("convnext_tiny", context, region_size=256, num_classes=5).eval()
    x = torch.randn(1, 3, 1000, 700)
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_intermediates(x, intermediates_only=True)
    assert logits.shape == (1, 5)
    assert [tuple(f.shape[-2:]) for f in feats] == [
        (math.ceil(1000 / s), math.ceil(700 / s)) for s in (4, 8, 16, 32)
    ]
    assert all(torch.isfinite(f).all() for f in feats)


@pytest.mark.parametrize("backbone", sorted(TINY_BACKBONES))
def test_none_equals_backbone_on_each_region(backbone):
    model = tiny_model(backbone, "none").eval()
    x = torch.randn(2, 3, 150, 100)
    grid = RegionGrid(150, 100, 64)
    kw = dict(TINY_BACKBONES[backbone])
    ref_backbone = model.region_encoder.backbone
    with torch.no_grad():
        ours = model.forward_intermediates(x, intermediates_only=True)
        per_region = ref_backbone(grid.nest(x))
    if model.region_encoder.channels_last:
        per_region = [f.permute(0, 3, 1, 2) for f in per_region]
    for o, f, s in zip(ours, per_region, (4, 8, 16, 32), strict=True):
        assert torch.allclose(o, grid.unnest(f, 2, crop_stride=s), atol=1e-6)
    # and the timm backbone built independently with the same weights agrees
    plain = (
        timm.create_model(xt_plugins.BACKBONES[backbone], features_only=True, img_size=64, **kw)
        if backbone != "convnext_tiny"
        else timm.create_model("convnext_tiny", features_only=True, **kw)
    )
    plain.load_state_dict(ref_backbone.state_dict())
    plain.eval()
    with torch.no_grad():
        first = plain(grid.nest(x)[:1])[0]
    if model.region_encoder.channels_last:
        first = first.permute(0, 3, 1, 2)
    assert torch.allclose(first[0], ours[0][0, :, :16, :16], atol=1e-6)


def _last_region_output(model, x):
    with torch.no_grad():
        last = model.forward_intermediates(x, intermediates_only=True)[-1]
    return last[..., -2:, -2:]  # last region's tokens (64 px regions, stride 32)


@pytest.mark.parametrize("context", CONTEXTS)
def test_first_region_reaches_last_region(context):
    # 9 regions x 4 tokens in segments of 8 tokens: for txl, region 0 reaches region 8 only
    # through the memory of earlier segments (mem_len covers the sequence)
    model = tiny_model(
        "convnext_tiny", context, context_kwargs={**TINY_CONTEXT, "mem_len": 64}
    ).eval()
    x = torch.randn(1, 3, 192, 192)  # 3 x 3 regions, 4 tokens each
    y = x.clone()
    y[..., :64, :64] += 3.0 * torch.randn(1, 3, 64, 64)
    changed = not torch.allclose(
        _last_region_output(model, x), _last_region_output(model, y), atol=1e-5
    )
    assert changed == (context != "none")


def test_txl_memory_carries_across_segments():
    def last_change(mem_len):
        model = tiny_model(
            "convnext_tiny", "txl", context_kwargs=dict(depth=1, segment_len=4, mem_len=mem_len)
        ).eval()
        x = torch.randn(1, 3, 64, 192)  # 3 regions -> 3 segments of one region each
        y = x.clone()
        y[..., :, :64] += 3.0
        return (_last_region_output(model, x) - _last_region_output(model, y)).abs().max().item()

    assert last_change(mem_len=8) > 1e-3  # segment 2 sees segments 0 and 1 through memory
    assert last_change(mem_len=0) < 1e-6  # without memory, segments are independent


@pytest.mark.parametrize("context", CONTEXTS)
def test_gradients_reach_region_encoder_first_layer(context):
    model = tiny_model("convnext_tiny", context, num_classes=3).train()
    x = torch.randn(1, 3, 128, 100)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([1]))
    loss.backward()
    first = next(p for p in model.region_encoder.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0
    if context != "none":
        assert any(
            p.grad is not None and p.grad.abs().sum() > 0 for p in model.context.parameters()
        )


def _saved_bytes(fn) -> tuple[torch.Tensor, int]:
    """Run ``fn()`` and count the bytes autograd saves for backward outside checkpoints."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total


@pytest.mark.parametrize("context", ["txl", "hyper", "mamba"])
def test_checkpoint_context_same_gradients_fewer_saved_activations(context):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 192, 256)  # 12 regions x 4 context tokens
    target = torch.tensor([1])
    plain = tiny_model("convnext_tiny", context, num_classes=2).train()
    ckpt = tiny_model("convnext_tiny", context, num_classes=2, checkpoint_context=True).train()
    ckpt.load_state_dict(plain.state_dict())
    assert ckpt.checkpoint_context and not plain.checkpoint_context
    tokens = torch.randn(1, 48, plain.context.dim, requires_grad=True)
    coords = plain.grid_for(192, 256).token_coords(plain.tokens_per_side)
    _, plain_bytes = _saved_bytes(lambda: plain.context(tokens, coords)[0])
    _, ckpt_bytes = _saved_bytes(lambda: ckpt.context(tokens, coords)[0])
    assert ckpt_bytes < 0.5 * plain_bytes  # only layer inputs survive to the backward pass
    for model in (plain, ckpt):
        torch.nn.functional.cross_entropy(model(x), target).backward()
    for (name, pa), pb in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        assert (pa.grad is None) == (pb.grad is None), name
        if pa.grad is not None:
            scale = float(pa.grad.abs().max())
            assert torch.allclose(pa.grad, pb.grad, atol=1e-6 + 1e-5 * scale), name


def test_set_grad_checkpointing_switches_regions_and_context():
    model = tiny_model("convnext_tiny", "mamba")
    model.set_grad_checkpointing(True)
    assert model.checkpoint_regions and model.context.grad_checkpointing
    model.set_grad_checkpointing(False)
    assert not model.checkpoint_regions and not model.checkpoint_context


@pytest.mark.parametrize("backbone", sorted(TINY_BACKBONES))
def test_backbones_with_two_input_channels(backbone):
    model = tiny_model(backbone, "txl", in_chans=2, num_classes=2).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 2, 100, 130))
    assert out.shape == (2, 2)
    with pytest.raises(ValueError, match="2 input channels"):
        model(torch.randn(1, 3, 64, 64))


def test_region_mask_skips_regions():
    model = tiny_model("convnext_tiny", "mamba", num_classes=2).eval()
    x = torch.randn(1, 3, 128, 128)
    mask = torch.tensor([[True, True, False, True]])
    y = x.clone()
    y[..., 64:, :64] = 100.0  # masked region: its content must not matter
    with torch.no_grad():
        a, b = model(x, region_mask=mask), model(y, region_mask=mask)
        full = model(x)
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, full, atol=1e-4)


def test_region_weights_from_safetensors_and_torch(tmp_path):
    from safetensors.torch import save_file

    kw = TINY_BACKBONES["convnext_tiny"]
    plain = timm.create_model("convnext_tiny", in_chans=3, **kw)  # a plain classifier checkpoint
    save_file(plain.state_dict(), tmp_path / "w.safetensors")
    torch.save({"state_dict": plain.state_dict()}, tmp_path / "w.pth")
    x = torch.randn(1, 3, 64, 64)
    expected = plain.forward_intermediates(x, intermediates_only=True)
    for name in ("w.safetensors", "w.pth"):
        model = xt_plugins.create_model(
            "convnext_tiny", "none", region_size=64, pretrained_region=tmp_path / name, **kw
        )
        got = model.region_encoder(x)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, expected, strict=True))
    # RGB weights into a 2-band (SAR) encoder: the stem is adapted, not refused
    xt_plugins.create_model(
        "convnext_tiny",
        "none",
        region_size=64,
        in_chans=2,
        pretrained_region=tmp_path / "w.safetensors",
        **kw,
    )


def test_region_weights_errors_name_file_and_keys(tmp_path):
    kw = TINY_BACKBONES["convnext_tiny"]
    state = timm.create_model("convnext_tiny", **kw).state_dict()
    state.pop("stem.0.weight")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(
        RegionWeightsError,
        match=r"bad\.pt(.|\n)*missing keys: stem_0\.weight(.|\n)*unexpected keys: extra\.weight",
    ):
        xt_plugins.create_model(
            "convnext_tiny", "none", region_size=64, pretrained_region=tmp_path / "bad.pt", **kw
        )
    torch.save({"weights": object()}, tmp_path / "pickle.pt")
    with pytest.raises(RegionWeightsError, match="weights_only=True"):
        xt_plugins.create_model(
            "convnext_tiny", "none", region_size=64, pretrained_region=tmp_path / "pickle.pt", **kw
        )


# ---------------------------------------------------------------------------- optimizers
def _group_of(groups, model):
    by_param = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    return {name: by_param[id(p)] for name, p in model.named_parameters()}


def test_param_groups_weight_decay_exempts_mamba_norms_and_positions():
    from timm.optim import create_optimizer_v2, param_groups_weight_decay

    model = tiny_model("swinv2_tiny", "mamba", num_classes=3)
    groups = param_groups_weight_decay(model, 0.05, no_weight_decay_list=model.no_weight_decay())
    wd = _group_of(groups, model)
    a_log = [n for n in wd if n.endswith("mixer.A_log")]
    assert a_log and all(wd[n] == 0.0 for n in a_log)  # 2-D: only the list exempts it
    assert all(wd[n] == 0.0 for n in wd if n.endswith("mixer.D"))
    assert wd["context.pos_proj.weight"] == 0.0  # positional projection (2-D)
    assert all(wd[n] == 0.0 for n in wd if "cpb_mlp" in n or n.endswith("logit_scale"))
    assert wd["head.fc.weight"] == 0.05 and wd["context.blocks.0.mixer.in_proj.weight"] == 0.05
    assert wd[model.first_conv_name() + ".weight"] == 0.05
    # timm's optimizer factory reads no_weight_decay() itself
    opt = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    assert _group_of(opt.param_groups, model) == wd


def test_group_matcher_gives_layer_wise_lr_decay():
    from timm.optim import create_optimizer_v2

    model = tiny_model("convnext_tiny", "mamba", num_classes=3)
    opt = create_optimizer_v2(model, "adamw", lr=1e-3, layer_decay=0.5)
    scale = {}
    for g in opt.param_groups:
        for p in g["params"]:
            scale[id(p)] = g["lr_scale"]
    by_name = {n: scale[id(p)] for n, p in model.named_parameters()}
    stem = by_name[model.first_conv_name() + ".weight"]
    stage3 = by_name["region_encoder.backbone.stages_3.blocks.0.conv_dw.weight"]
    context = by_name["context.pos_proj.weight"]
    head = by_name["head.fc.weight"]
    assert stem < stage3 < context < head == 1.0


# ---------------------------------------------------------------------------- timm conventions
@pytest.mark.parametrize("backbone", sorted(TINY_BACKBONES))
def test_unpooled_forward_with_reset_classifier_and_global_pool(backbone):
    model = tiny_model(backbone, "txl", num_classes=4).eval()
    x = torch.randn(1, 3, 130, 70)
    with torch.no_grad():
        feat = model.forward_features(x)
        model.reset_classifier(0, "")
        unpooled = model(x)
        assert unpooled.shape == (1, model.num_features, 5, 3)
        model.reset_classifier(0, "avg")
        assert model(x).shape == (1, model.num_features)
    # global_pool='' at construction: per-position classifier (B, K, h, w)
    per_pos = tiny_model(backbone, "txl", num_classes=4, global_pool="").eval()
    with torch.no_grad():
        out = per_pos(x)
    assert out.shape == (1, 4, 5, 3) and feat.shape[-2:] == out.shape[-2:]
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(0, "max")


def test_torchgeo_load_state_dict_reaches_an_xt_model():
    from torchgeo.tasks.utils import load_state_dict

    src = tiny_model("convnext_tiny", "mamba", num_classes=2)
    dst = tiny_model("convnext_tiny", "mamba", num_classes=2)
    torch.nn.init.zeros_(dst.head.fc.weight)
    missing, unexpected = load_state_dict(dst, src.state_dict())  # crashed: no out_features
    assert not missing and not unexpected
    for (name, a), b in zip(src.state_dict().items(), dst.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
