"""torch.compile(fullgraph=True) and strict torch.export for every context encoder.

Compiled with ``backend="aot_eager"``: Dynamo's full-graph capture and AOTAutograd (the forward
and backward graphs, functionalised) are where the encoders used to break (``out=`` ops into
strided views, ``torch.utils.checkpoint`` under export); Inductor's C++ code generation would
add minutes on a small CPU without testing more of our code. One Inductor run is marked slow.
"""

import pytest
import torch

from tests.conftest import tiny_model
from xt_plugins.nn.context.mamba import MambaContext

CONTEXTS = ["none", "txl", "hyper", "mamba"]
SIZE = (1, 3, 128, 64)  # 2 regions of 64 px, 8 context tokens


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _image(seed: int = 1) -> torch.Tensor:
    return torch.randn(*SIZE, generator=torch.Generator().manual_seed(seed))


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("context", CONTEXTS)
def test_compiled_inference_equals_eager(context):
    model = tiny_model(context=context).eval()
    x = _image()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        ref = model(x)
        out = compiled(x)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("context", CONTEXTS)
def test_strict_export_at_fixed_size_equals_eager(context):
    model = tiny_model(context=context).eval()
    model.context.grad_checkpointing = True  # export cannot trace checkpoints: run plainly
    x = _image()
    exported = torch.export.export(model, (x,), strict=True)
    with torch.no_grad():
        ref = model(x)
        out = exported.module()(x)
        other = exported.module()(_image(seed=2))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(other, model(_image(seed=2)), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("context", CONTEXTS)
def test_compiled_training_step_matches_eager_gradients(context):
    model = tiny_model(context=context).train()
    model.context.grad_checkpointing = context == "mamba"  # a traced checkpoint as well
    x = _image()
    model(x).pow(2).sum().backward()
    ref = _grads(model)
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    loss = compiled(x).pow(2).sum()
    loss.backward()
    got = _grads(model)
    assert got.keys() == ref.keys() and len(got) > 0
    if context != "none":
        assert any(k.startswith("context.") for k in got)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=1e-4, rtol=1e-3, msg=k)


def _mamba_case(n: int = 20):
    torch.manual_seed(0)
    ctx = MambaContext(16, depth=2, d_state=4, chunk_size=8, checkpoint_len=12)
    tokens = torch.randn(2, n, 16)
    coords = torch.stack([torch.arange(n) // 8, torch.arange(n) % 8], -1)
    return ctx, tokens, coords


def test_mamba_compiles_with_several_scan_chunks_and_checkpointed_pieces():
    """Several scan chunks (checkpointed in eager) and layers run in checkpointed pieces."""
    ctx, tokens, coords = _mamba_case()
    compiled = torch.compile(ctx, fullgraph=True, backend="aot_eager")
    with torch.no_grad():  # the streaming scan's out= ops used to break the graph here
        torch.testing.assert_close(compiled(tokens, coords)[0], ctx(tokens, coords)[0])
    ctx.grad_checkpointing = True
    weight = torch.randn(20, 16)
    grads = []
    for fn in (ctx, compiled):
        x = tokens.clone().requires_grad_(True)
        (fn(x, coords)[0][0] * weight).sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)
    exported = torch.export.export(ctx, (tokens, coords), strict=True)
    torch.testing.assert_close(exported.module()(tokens, coords)[0], ctx(tokens, coords)[0])


@pytest.mark.slow
def test_mamba_compiles_with_inductor():
    ctx, tokens, coords = _mamba_case()
    compiled = torch.compile(ctx, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(
            compiled(tokens, coords)[0], ctx(tokens, coords)[0], atol=1e-4, rtol=1e-4
        )


def test_export_with_region_checkpointing():
    """``checkpoint_regions=True`` (a training setting) does not stop a strict export."""
    model = tiny_model("convnext_tiny", "txl", num_classes=2, checkpoint_regions=True).train()
    x = torch.randn(1, 3, 128, 128)
    exported = torch.export.export(model, (x,), strict=True)
    torch.testing.assert_close(exported.module()(x), model(x), atol=1e-4, rtol=1e-4)
