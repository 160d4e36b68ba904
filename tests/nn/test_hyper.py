import resource

import pytest
import torch
import torch.nn.functional as F

from xt_plugins.nn.context.base import CONTEXT_ENCODERS
from xt_plugins.nn.context.hyper import HyperAttention, HyperContext, hyper_attention


def _exact(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def _rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _grid(rows, cols):
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.stack([r, c], -1).reshape(-1, 2)  # (N, 2)


def test_below_threshold_is_exact_sdpa():
    q, k, v = _randn(3, 2, 2, 50, 16).unbind(0)
    out = hyper_attention(q, k, v, exact_threshold=64)
    torch.testing.assert_close(out, _exact(q, k, v), atol=1e-5, rtol=0)


@pytest.mark.parametrize("n", [100, 128])  # padded and unpadded single block
def test_single_block_approx_path_is_exact(n):
    q, k, v = _randn(3, 2, 3, n, 16, seed=1).unbind(0)
    gen = torch.Generator().manual_seed(0)
    out = hyper_attention(q, k, v, exact_threshold=4, block_size=128, sample_size=32, generator=gen)
    torch.testing.assert_close(out, _exact(q, k, v), atol=1e-4, rtol=0)


def test_sampled_mass_is_weighted_by_keys_outside_the_block():
    # Two key groups: 64 copies of ka (one full block) and 40 copies of kb (a padded block).
    # With lsh_bits=1 and projection e1, ka (negative e1) sorts first. The keys outside each
    # block are then all identical, so any sample gives the outside mass exactly, but only
    # with weight (N - n_block) / sample_size and with the block's own keys excluded.
    d = 8
    e1 = torch.zeros(d)
    e1[0] = 1.0
    ka, kb = -e1 + 0.5 * _randn(d, seed=2), e1 + 0.5 * _randn(d, seed=3)
    ka[0], kb[0] = -1.0, 1.0
    k = torch.cat([kb.expand(40, d), ka.expand(64, d)])[None, None]  # (1, 1, 104, d)
    v = torch.cat([torch.ones(40, d), -torch.ones(64, d)])[None, None]
    q = 3 * _randn(1, 1, 104, d, seed=4)
    gen = torch.Generator().manual_seed(0)
    out = hyper_attention(
        q,
        k,
        v,
        block_size=64,
        sample_size=5,
        lsh_bits=1,
        exact_threshold=4,
        projections=e1[:, None],
        generator=gen,
    )
    torch.testing.assert_close(out, _exact(q, k, v), atol=1e-5, rtol=0)


def test_sampled_part_converges_to_exact_with_more_samples():
    # Random (unstructured) inputs: the sampled estimate of the mass outside each block is
    # unbiased, so the error shrinks like 1/sqrt(sample_size).
    q, k, v = _randn(3, 1, 2, 256, 16, seed=5).unbind(0)
    q, k = 2 * q, 2 * k
    exact = _exact(q, k, v)
    errs = []
    for m in (32, 2048):
        gen = torch.Generator().manual_seed(1)
        out = hyper_attention(
            q, k, v, block_size=32, sample_size=m, exact_threshold=4, generator=gen
        )
        errs.append(_rel_err(out, exact))
    assert errs[1] < 0.25  # measured ~0.14
    assert errs[1] < errs[0] / 4  # measured ~1.08 -> ~0.14


def _clustered(num_clusters=8, per=128, d=16, spread=0.002, scale=4.0, seed=0):
    """Shuffled tight clusters: keys are near-copies of queries, values random per token.

    Cluster centres are orthogonal Hadamard rows, and the LSH hyperplanes are the first 7
    coordinate axes, so each cluster falls in its own bucket with a wide margin (with random
    hyperplanes, clusters sometimes collide in a bucket or straddle a hyperplane; see the
    hyper_attention docstring). Attention mass stays inside the query's cluster (logit gap
    ~scale**2).
    """
    gen = torch.Generator().manual_seed(seed)
    hadamard = torch.ones(1, 1)
    while hadamard.shape[0] < d:
        hadamard = torch.cat(
            [torch.cat([hadamard, hadamard], 1), torch.cat([hadamard, -hadamard], 1)]
        )
    centers = hadamard[:num_clusters] / d**0.5  # (C, d) orthonormal, distinct sign codes
    labels = torch.arange(num_clusters).repeat_interleave(per)
    labels = labels[torch.randperm(labels.numel(), generator=gen)]
    q = centers[labels] + spread * torch.randn(labels.numel(), d, generator=gen)
    k = q + 0.1 * spread * torch.randn(labels.numel(), d, generator=gen)
    v = torch.randn(labels.numel(), d, generator=gen)
    q, k = (scale * d**0.25 * x for x in (q, k))  # logits = scale**2 * cos
    projections = torch.eye(d)[:, :7]
    return q[None, None], k[None, None], v[None, None], projections


def test_clustered_inputs_close_to_exact_and_beat_random_order():
    q, k, v, proj = _clustered()
    exact = _exact(q, k, v)
    kwargs = dict(block_size=128, sample_size=64, exact_threshold=8)
    lsh = hyper_attention(
        q, k, v, projections=proj, generator=torch.Generator().manual_seed(0), **kwargs
    )
    # Zero hyperplanes put every token in one bucket: the stable sort keeps the shuffled
    # input order, i.e. a random-order baseline with the same block + sample budget.
    base = hyper_attention(
        q,
        k,
        v,
        projections=torch.zeros_like(proj),
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    )
    err_lsh, err_base = _rel_err(lsh, exact), _rel_err(base, exact)
    assert err_lsh < 0.01  # measured ~1e-6
    assert err_base > 1.0  # measured ~3.4
    assert err_base > 20 * err_lsh


def test_long_sequence_does_not_build_n_by_n():
    n, d = 16384, 32
    q, k, v = _randn(3, 1, 1, n, d, seed=6).unbind(0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    out = hyper_attention(q, k, v, generator=torch.Generator().manual_seed(0))
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert out.shape == (1, 1, n, d)
    assert torch.isfinite(out).all()
    assert grown_mib < 512  # an N x N float32 matrix alone is 1024 MiB; measured ~130 MiB


def test_hyper_attention_rejects_bad_shapes():
    q = torch.randn(1, 2, 10, 8)
    with pytest.raises(ValueError, match="B, H, N, d"):
        hyper_attention(q, q[:, :1], q)


def test_attention_module_eval_deterministic_train_random():
    attn = HyperAttention(32, num_heads=2, block_size=16, sample_size=8, exact_threshold=8)
    x = _randn(2, 100, 32, seed=7)
    attn.eval()
    torch.testing.assert_close(attn(x), attn(x), atol=0, rtol=0)
    attn.train()
    assert not torch.equal(attn(x), attn(x))
    assert "lsh_proj" not in attn.state_dict()


def test_hyper_context_registered_and_shape():
    assert CONTEXT_ENCODERS["hyper"] is HyperContext
    ctx = HyperContext(64, depth=2, segment_len=4, mem_len=2, d_state=8)  # unknown kwargs ok
    assert ctx.blocks[0].attn.num_heads == 2
    out, state = ctx(_randn(2, 12, 64), _grid(3, 4))
    assert out.shape == (2, 12, 64) and state is None


@pytest.mark.parametrize("threshold", [2048, 8])  # exact and approximate attention
def test_hyper_context_eval_deterministic(threshold):
    ctx = HyperContext(32, exact_threshold=threshold, block_size=16, sample_size=8).eval()
    x, coords = _randn(2, 64, 32, seed=8), _grid(8, 8)
    torch.testing.assert_close(ctx(x, coords)[0], ctx(x, coords)[0], atol=0, rtol=0)


def test_hyper_context_first_token_reaches_last():
    ctx = HyperContext(32).eval()
    x, coords = _randn(1, 16, 32, seed=9), _grid(4, 4)
    y = x.clone()
    y[:, 0] += _randn(32, seed=12)  # not a constant shift: LayerNorm would cancel that
    with torch.no_grad():
        out_x, out_y = ctx(x, coords)[0], ctx(y, coords)[0]
    assert (out_x[:, -1] - out_y[:, -1]).abs().max() > 1e-4


def test_hyper_context_positions_matter():
    ctx = HyperContext(32).eval()
    x = _randn(1, 16, 32, seed=10)
    with torch.no_grad():
        a = ctx(x, _grid(4, 4))[0]
        b = ctx(x, _grid(4, 4) + 5)[0]
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("threshold", [2048, 8])
def test_hyper_context_gradients_reach_inputs_and_weights(threshold):
    ctx = HyperContext(32, exact_threshold=threshold, block_size=16, sample_size=8)
    x = _randn(2, 40, 32, seed=11).requires_grad_()
    out, _ = ctx(x, _grid(5, 8))
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in ctx.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert ctx.pos_proj.weight.grad.abs().sum() > 0


def test_hyper_context_builds_on_meta():
    with torch.device("meta"):
        ctx = HyperContext(96, depth=3)
    assert all(p.is_meta for p in ctx.parameters())
    assert ctx.blocks[0].attn.lsh_proj.is_meta
    ctx.to_empty(device="cpu")
    for block in ctx.blocks:
        block.attn.reset_lsh()
    ref = HyperContext(96, depth=3)
    torch.testing.assert_close(ctx.blocks[2].attn.lsh_proj, ref.blocks[2].attn.lsh_proj)


def test_bad_num_heads():
    with pytest.raises(ValueError, match="divide"):
        HyperContext(30, num_heads=4)
