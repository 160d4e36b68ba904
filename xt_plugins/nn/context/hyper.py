"""HyperAttention context encoder: near-linear attention over long region-token sequences.

HyperAttention (Han et al., 2023, "HyperAttention: Long-context Attention in Near-Linear
Time") approximates softmax attention by (1) sorting queries and keys with an angular
locality-sensitive hash so that similar vectors land next to each other, (2) computing exact
attention inside aligned blocks of the sorted order (the large entries of the attention
matrix), and (3) estimating the rest of each row from a uniform sample of key columns. Both
parts are merged in log-sum-exp space, so the result is a proper softmax average.

Short sequences (``N <= exact_threshold``) use exact attention; the approximation only kicks
in for images with very many regions. Memory is O(N * (block_size + sample_size)) per head.

.. versionadded:: 0.1
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import (
    ContextEncoder,
    identity_init,
    num_heads_for,
    register_context,
    sincos_2d,
    trunc_normal_init,
)

__all__ = ["hyper_attention", "HyperAttention", "HyperContext"]


def _gray_rank_table(bits: int, device: torch.device) -> Tensor:
    """Position of every ``bits``-bit code in the reflected Gray-code sequence.

    Consecutive entries of the Gray-code sequence differ in one bit, so sorting hash codes by
    this rank puts codes at Hamming distance 1 (neighbouring angular cells) next to each other.

    Returns:
        (2**bits,) int64 tensor ``t`` with ``t[gray(i)] = i``.
    """
    i = torch.arange(2**bits, device=device)  # (2**bits,)
    gray = i ^ (i >> 1)
    table = torch.empty_like(i)
    table[gray] = i
    return table


def _lsh_rank(x: Tensor, projections: Tensor, table: Tensor) -> Tensor:
    """Angular LSH bucket of each vector, as its rank in Gray-code order.

    Args:
        x: (B, H, N, d) vectors.
        projections: (d, bits) random directions.
        table: (2**bits,) Gray-code rank table.

    Returns:
        (B, H, N) int64 bucket ranks.
    """
    bits = (x @ projections.to(x.dtype)) > 0  # (B, H, N, bits)
    weights = 2 ** torch.arange(bits.shape[-1], device=x.device)  # (bits,)
    codes = (bits.long() * weights).sum(-1)  # (B, H, N)
    return table[codes]


def _gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """Gather along the sequence axis: x (B, H, N, d), index (B, H, M) -> (B, H, M, d)."""
    return x.gather(2, index.unsqueeze(-1).expand(-1, -1, -1, x.shape[-1]))


def _partial_softmax(scores: Tensor, values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Unnormalised softmax pieces of one block of keys.

    Args:
        scores: (..., Q, K) logits (may hold -inf for masked keys, never a full -inf row).
        values: (..., K, d) values.

    Returns:
        ``(row_max, row_sum, out)``: (..., Q, 1), (..., Q, 1) and (..., Q, d) with
        ``out = exp(scores - row_max) @ values`` and ``row_sum = exp(scores - row_max).sum(-1)``.
    """
    row_max = scores.amax(-1, keepdim=True).detach()  # cancels out exactly; no grad needed
    weights = torch.exp(scores - row_max)
    return row_max, weights.sum(-1, keepdim=True), weights @ values


def hyper_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    block_size: int = 256,
    sample_size: int = 256,
    lsh_bits: int = 7,
    exact_threshold: int = 2048,
    projections: Tensor | None = None,
    generator: torch.Generator | None = None,
    scale: float | None = None,
) -> Tensor:
    """Non-causal HyperAttention (Han et al., 2023): LSH-sorted block attention + sampling.

    For ``N <= exact_threshold`` this is exact
    :func:`torch.nn.functional.scaled_dot_product_attention`. Above it:

    1. queries and keys are hashed with angular LSH (signs of ``lsh_bits`` random projections)
       and sorted by bucket in Gray-code order (a stable sort, so ties keep sequence order);
    2. query block ``i`` of the sorted order attends exactly to key block ``i`` (blocks of
       ``block_size``; the sequence is padded to a multiple and padded keys are masked);
    3. every query block also attends to ``sample_size`` keys drawn uniformly (with
       replacement) from the keys *outside* its key block; their weights are scaled by
       ``(N - n_block) / sample_size``, an unbiased estimate of the mass outside the block;
    4. both parts are merged in log-sum-exp space and the outputs are unsorted.

    When ``block_size >= N`` there is one block holding every key, nothing is sampled and
    the result equals exact attention. Memory is O(N * (block_size + sample_size)) per head.

    The approximation is good when each query's heavy keys share its LSH bucket and that
    bucket run lines up with a block; a cluster split by a hyperplane, or two clusters sharing
    a bucket (interleaved by the stable sort), leaves part of the mass to the sampled estimate,
    whose error falls like ``1 / sqrt(sample_size)``.

    Args:
        q: (B, H, N, d) queries.
        k: (B, H, N, d) keys.
        v: (B, H, N, d) values.
        block_size: size of the exact blocks in sorted order.
        sample_size: number of sampled key columns per query block (0 disables sampling).
        lsh_bits: number of random hyperplanes of the angular LSH (``2**lsh_bits`` buckets).
        exact_threshold: sequences up to this length use exact attention.
        projections: (d, lsh_bits) hyperplane normals; drawn from ``generator`` when None.
        generator: random generator for the projections and the key sample (the global RNG
            when None). Pass a seeded one for deterministic output.
        scale: logit scale; ``d ** -0.5`` when None.

    Returns:
        (B, H, N, d) attention output, in the dtype of ``q``.

    Raises:
        ValueError: on mismatched shapes or invalid sizes.
    """
    if q.ndim != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            "q, k, v must be (B, H, N, d) with equal B, H, N (and equal d for q, k); got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if block_size < 1 or sample_size < 0 or not 1 <= lsh_bits <= 24:
        raise ValueError(
            f"need block_size >= 1, sample_size >= 0, 1 <= lsh_bits <= 24; got {block_size}, "
            f"{sample_size}, {lsh_bits}"
        )
    batch, heads, n, d = q.shape
    scale = d**-0.5 if scale is None else scale
    if n <= exact_threshold:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)

    gen_device = generator.device if generator is not None else q.device
    if projections is None:
        projections = torch.randn(d, lsh_bits, generator=generator, device=gen_device)
    if projections.shape != (d, lsh_bits):
        raise ValueError(f"projections must be ({d}, {lsh_bits}), got {tuple(projections.shape)}")
    projections = projections.to(q.device)

    # 1. sort queries and keys by LSH bucket
    table = _gray_rank_table(lsh_bits, q.device)
    q_order = torch.argsort(_lsh_rank(q, projections, table), dim=-1, stable=True)  # (B, H, N)
    k_order = torch.argsort(_lsh_rank(k, projections, table), dim=-1, stable=True)
    acc = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    q_s = _gather_rows(q, q_order).to(acc)  # (B, H, N, d)
    k_s = _gather_rows(k, k_order).to(acc)
    v_s = _gather_rows(v, k_order).to(acc)  # (B, H, N, dv)
    dv = v.shape[-1]

    # 2. exact attention inside aligned blocks of the sorted order
    bs = min(block_size, n)
    nb = -(-n // bs)
    pad = nb * bs - n
    qb = F.pad(q_s, (0, 0, 0, pad)).view(batch, heads, nb, bs, d)
    kb = F.pad(k_s, (0, 0, 0, pad)).view(batch, heads, nb, bs, d)
    vb = F.pad(v_s, (0, 0, 0, pad)).view(batch, heads, nb, bs, dv)
    s_block = (qb @ kb.transpose(-1, -2)) * scale  # (B, H, nb, bs, bs)
    if pad:
        key_valid = (torch.arange(nb * bs, device=q.device) < n).view(nb, 1, bs)
        s_block = s_block.masked_fill(~key_valid, float("-inf"))
    m1, l1, o1 = _partial_softmax(s_block, vb)  # (B, H, nb, bs, 1|1|dv)

    # 3. uniformly sampled keys from outside each query block's key block
    if nb > 1 and sample_size > 0:
        starts = torch.arange(nb, device=q.device) * bs  # (nb,)
        sizes = (n - starts).clamp(max=bs)  # (nb,) keys in each block
        outside = n - sizes  # (nb,) >= 1 since nb > 1
        u = torch.rand(batch, heads, nb, sample_size, generator=generator, device=gen_device)
        r = (u.to(q.device) * outside[:, None]).long()
        r = torch.minimum(r, (outside - 1)[:, None])  # (B, H, nb, m) in [0, outside)
        idx = r + (r >= starts[:, None]).long() * sizes[:, None]  # skip the block's own keys
        flat = idx.view(batch, heads, nb * sample_size)
        ks = _gather_rows(k_s, flat).view(batch, heads, nb, sample_size, d)
        vs = _gather_rows(v_s, flat).view(batch, heads, nb, sample_size, dv)
        log_w = torch.log(outside.to(acc) / sample_size).view(nb, 1, 1)
        s_sample = (qb @ ks.transpose(-1, -2)) * scale + log_w  # (B, H, nb, bs, m)
        m2, l2, o2 = _partial_softmax(s_sample, vs)
        # 4. merge the two parts in log-sum-exp space
        m = torch.maximum(m1, m2)
        a1, a2 = torch.exp(m1 - m), torch.exp(m2 - m)
        out_s = (o1 * a1 + o2 * a2) / (l1 * a1 + l2 * a2)
    else:
        out_s = o1 / l1
    out_s = out_s.reshape(batch, heads, nb * bs, dv)[:, :, :n]  # (B, H, N, dv)

    # unsort: row j of the sorted output belongs to query q_order[j]
    inverse = torch.empty_like(q_order).scatter_(
        -1, q_order, torch.arange(n, device=q.device).expand_as(q_order)
    )
    return _gather_rows(out_s, inverse).to(q.dtype)


class HyperAttention(nn.Module):
    """Multi-head self-attention computed with :func:`hyper_attention`.

    The LSH hyperplanes are a non-persistent buffer drawn from ``seed``, so they are not in
    checkpoints and are identical wherever the module is built. In eval mode the key sample
    comes from a generator seeded with ``seed`` on every call (deterministic output); in
    training it comes from the global RNG.

    Args:
        dim: token dimension.
        num_heads: number of heads; must divide ``dim``.
        qkv_bias: add a bias to the query/key/value projection.
        block_size: see :func:`hyper_attention`.
        sample_size: see :func:`hyper_attention`.
        lsh_bits: see :func:`hyper_attention`.
        exact_threshold: see :func:`hyper_attention`.
        seed: seed of the LSH hyperplanes and of the eval-mode key sample.

    Raises:
        ValueError: if ``num_heads`` does not divide ``dim``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        block_size: int = 256,
        sample_size: int = 256,
        lsh_bits: int = 7,
        exact_threshold: int = 2048,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide dim={dim}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.block_size = block_size
        self.sample_size = sample_size
        self.lsh_bits = lsh_bits
        self.exact_threshold = exact_threshold
        self.seed = seed
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        # Made on the default device (meta included); values are filled by reset_lsh.
        self.register_buffer("lsh_proj", torch.empty(self.head_dim, lsh_bits), persistent=False)
        self.reset_lsh()

    @torch.no_grad()
    def reset_lsh(self) -> None:
        """(Re)draw the LSH hyperplanes from ``seed`` (call after ``to_empty``)."""
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        proj = torch.randn(self.head_dim, self.lsh_bits, generator=gen, device="cpu")
        self.lsh_proj.copy_(proj)  # a no-op on the meta device

    def forward(self, x: Tensor) -> Tensor:
        """Attend over the whole sequence.

        Args:
            x: (B, N, D) tokens.

        Returns:
            (B, N, D) tokens.
        """
        batch, n, dim = x.shape
        qkv = self.qkv(x).view(batch, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, hd)
        generator = None
        if not self.training and n > self.exact_threshold:
            generator = torch.Generator(device=x.device).manual_seed(self.seed)
        out = hyper_attention(
            q,
            k,
            v,
            block_size=self.block_size,
            sample_size=self.sample_size,
            lsh_bits=self.lsh_bits,
            exact_threshold=self.exact_threshold,
            projections=self.lsh_proj,
            generator=generator,
        )  # (B, H, N, hd)
        return self.proj(out.transpose(1, 2).reshape(batch, n, dim))


class _Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, seed: int, **attn: Any):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = HyperAttention(dim, num_heads, seed=seed, **attn)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


@register_context("hyper")
class HyperContext(ContextEncoder):
    """Transformer context encoder with HyperAttention (the xT "hyper" context).

    Tokens get a learnable projection of the 2-D sine-cosine embedding of their (row, col) on
    the global token grid, then ``depth`` pre-norm blocks (HyperAttention + MLP) and a final
    LayerNorm. Every token sees every other token (non-causal); sequences longer than
    ``exact_threshold`` use the near-linear HyperAttention approximation.

    Args:
        dim: token dimension.
        depth: number of transformer blocks.
        num_heads: attention heads; ``num_heads_for(dim)`` when None.
        mlp_ratio: MLP hidden size as a multiple of ``dim``.
        block_size: exact-attention block size of the approximation.
        sample_size: sampled keys per query block of the approximation.
        exact_threshold: sequences up to this length use exact attention.
        **kwargs: options of the other registered context encoders, accepted and ignored (one
            option set serves every encoder); any other name raises ``TypeError``.
    """

    def __init__(
        self,
        dim: int,
        depth: int = 2,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        block_size: int = 256,
        sample_size: int = 256,
        exact_threshold: int = 2048,
        **kwargs: Any,
    ) -> None:
        super().__init__(dim, **kwargs)
        num_heads = num_heads_for(dim) if num_heads is None else num_heads
        self.pos_proj = nn.Linear(dim, dim)
        self.blocks = nn.ModuleList(
            _Block(
                dim,
                num_heads,
                mlp_ratio,
                seed=i,
                block_size=block_size,
                sample_size=sample_size,
                exact_threshold=exact_threshold,
            )
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        trunc_normal_init(self)
        identity_init(self.pos_proj)

    def forward(self, tokens: Tensor, coords: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """Integrate context over the whole token sequence.

        Args:
            tokens: (B, N, D) region tokens.
            coords: (N, 2) (row, col) of each token on the image's global token grid.
            state: ignored (the encoder is stateless).

        Returns:
            ``(out, None)`` with ``out`` of shape (B, N, D).
        """
        self._check(tokens, coords)
        pos = self.pos_proj(sincos_2d(coords, self.dim).to(tokens.dtype))  # (N, D)
        x = tokens + pos
        for block in self.blocks:
            x = self.run_layer(block, x)
        return self.norm(x), None
