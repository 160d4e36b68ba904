"""Context options: one shared option set serves every encoder, a typo raises TypeError."""

import pytest
import torch

import xt_plugins
from tests.conftest import TINY_CONTEXT, tiny_model
from xt_plugins.nn.context import CONTEXT_ENCODERS, build_context
from xt_plugins.nn.context.base import (
    ContextEncoder,
    check_context_options,
    context_options,
    register_context,
)

NAMES = ["none", "txl", "hyper", "mamba"]


def test_each_encoder_lists_its_constructor_options():
    assert context_options("none") == ()
    assert context_options("txl") == ("depth", "mem_len", "mlp_ratio", "num_heads", "segment_len")
    assert set(context_options("hyper")) == {
        "depth", "num_heads", "mlp_ratio", "block_size", "sample_size", "exact_threshold"
    }  # fmt: skip
    assert {"depth", "d_state", "d_conv", "expand", "chunk_size"} <= set(context_options("mamba"))
    with pytest.raises(KeyError, match="known"):
        context_options("nope")


@pytest.mark.parametrize("name", NAMES)
def test_shared_option_set_is_accepted_and_foreign_options_ignored(name):
    ctx = build_context(name, 16, **TINY_CONTEXT)  # options of every encoder at once
    tokens, coords = torch.randn(1, 6, 16), torch.stack([torch.zeros(6), torch.arange(6)], -1)
    out, _ = ctx(tokens, coords)
    assert out.shape == (1, 6, 16)
    # the options that belong to the encoder took effect
    if name in ("txl", "hyper", "mamba"):
        assert len(ctx.layers if name == "txl" else ctx.blocks) == TINY_CONTEXT["depth"]
    if name == "txl":
        assert (ctx.segment_len, ctx.mem_len) == (8, 16)
    if name == "mamba":
        assert ctx.blocks[0].mixer.d_state == 8


@pytest.mark.parametrize("name", NAMES)
def test_typo_raises_type_error_naming_option_and_known_ones(name):
    with pytest.raises(TypeError) as err:
        build_context(name, 16, depth=1, segment_length=8)
    msg = str(err.value)
    assert "'segment_length'" in msg and "did you mean 'segment_len'?" in msg
    assert f"context encoder {name!r}" in msg
    for option in context_options(name):  # the encoder's own options are listed
        assert option in msg
    assert "\n" not in msg
    # direct construction checks the same way
    with pytest.raises(TypeError, match="segment_length"):
        CONTEXT_ENCODERS[name](16, segment_length=8)


def test_typo_in_model_context_kwargs_raises():
    with pytest.raises(TypeError, match=r"'d_stat' \(did you mean 'd_state'\?\)"):
        tiny_model(context="mamba", context_kwargs={**TINY_CONTEXT, "d_stat": 4})
    with pytest.raises(TypeError, match="'sampel_size'"):
        xt_plugins.create_model(
            "convnext_tiny",
            "hyper",
            region_size=64,
            dims=(8, 8, 8, 8),
            depths=(1, 1, 1, 1),
            context_kwargs={"sampel_size": 4},
        )


def test_a_newly_registered_encoder_adds_its_options_for_everyone():
    class Scaled(ContextEncoder):
        def __init__(self, dim, scale=1.0, **kwargs):
            super().__init__(dim, **kwargs)
            self.scale = scale

        def forward(self, tokens, coords, state=None):
            return tokens * self.scale, None

    with pytest.raises(TypeError, match="'scale'"):
        build_context("txl", 16, scale=2.0)
    register_context("_test_scaled")(Scaled)
    try:
        assert build_context("_test_scaled", 16, scale=2.0, segment_len=4).scale == 2.0
        build_context("txl", 16, depth=1, scale=2.0)  # now another encoder's option: ignored
        check_context_options("none", {"scale": 2.0})
        with pytest.raises(TypeError, match="'scal'"):
            build_context("_test_scaled", 16, scal=2.0)
    finally:
        del CONTEXT_ENCODERS["_test_scaled"]


def test_a_typo_is_caught_for_the_region_only_model_too():
    with pytest.raises(TypeError, match="segment_length"):
        tiny_model("convnext_tiny", "none", context_kwargs={"segment_length": 8})
