"""The official xT context head's layers, read from the official code (commit 4e79e41).

LLaMA-style pre-norm layers (RMSNorm, attention, gated GELU MLP), the Mamba blocks, the token
part of ``LLMClassificationDecoder`` (:class:`OfficialContext`) and the two classifier heads.

.. versionadded:: 0.2
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers.mamba import Mamba

__all__ = [
    "GatedMLP",
    "OfficialContext",
    "OfficialHead",
    "OfficialLayer",
    "OfficialMambaBlock",
    "OfficialPoolHead",
    "RMSNorm",
    "SelfAttention",
    "sincos_table",
]

#: HyperAttention falls back to exact attention up to this many keys (``LLMAttention``).
HYPER_MIN_SEQ_LEN = 4096


def sincos_table(dim: int, rows: int, cols: int) -> Tensor:
    """The official fixed 2-D sine-cosine positions of a ``rows x cols`` token map.

    ``get_2d_sincos_pos_embed(dim, grid)`` of the official code (MAE's table), in float32 as there:
    for the token at (row ``i``, column ``j``), channels ``[: dim / 2]`` encode ``j`` and
    ``[dim / 2 :]`` encode ``i``, each as ``[sin(p * w), cos(p * w)]`` with
    ``w_k = 10000 ** (-k / (dim / 4))``. The official code only builds square tables; for a square
    map this is that table, for other shapes the same formula.

    Args:
        dim: channels (a multiple of 4).
        rows: map height.
        cols: map width.

    Returns:
        (rows * cols, dim) float32, row-major like ``flatten(2)`` of a (B, C, rows, cols) map.
    """
    if dim % 4:
        raise ValueError(
            f"hidden_size must be a multiple of 4 for 2-D sin-cos positions, got {dim}"
        )
    omega = torch.arange(dim // 4, dtype=torch.float32) / (dim / 4.0)
    omega = 1.0 / 10000**omega  # (dim / 4,)
    row, col = torch.meshgrid(
        torch.arange(rows, dtype=torch.float32),
        torch.arange(cols, dtype=torch.float32),
        indexing="ij",
    )

    def one_axis(pos: Tensor) -> Tensor:
        out = pos.reshape(-1, 1) * omega  # (M, dim / 4)
        return torch.cat([out.sin(), out.cos()], dim=1)  # (M, dim / 2)

    return torch.cat([one_axis(col), one_axis(row)], dim=1)  # (M, dim)


class RMSNorm(nn.Module):
    """LLaMA's RMSNorm: ``weight * x / sqrt(mean(x^2) + eps)``, computed in float32.

    Args:
        dim: channels.
        eps: added to the mean square.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """(..., dim) -> (..., dim)."""
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class GatedMLP(nn.Module):
    """LLaMA's MLP with GELU: ``down(gelu(gate(x)) * up(x))``, no biases.

    Args:
        dim: channels.
        hidden: inner channels.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, L, dim) -> (B, L, dim)."""
        return self.down_proj(F.gelu(self.gate_proj(x)) * self.up_proj(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (``qkv``, ``proj`` as officially).

    Args:
        dim: channels.
        num_heads: heads (``dim / num_heads`` channels each; scale ``head_dim ** -0.5``).
        qkv_bias: bias on the qkv projection.
        causal: mask each token from the tokens after it.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, causal: bool) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"attention needs 1..{dim} heads dividing {dim}, got {num_heads}")
        self.num_heads = num_heads
        self.causal = causal
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, L, dim) -> (B, L, dim)."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (B, H, L, c / H)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class OfficialLayer(nn.Module):
    """The official ``LLMLayer``: pre-norm attention and gated MLP, each with a residual.

    Args:
        dim: channels (``hidden_size``).
        inner_dim: MLP channels (``hidden_size * mlp_ratio``).
        attention_method: ``hyper`` (causal, ``dim // 128`` heads, qkv bias) or ``naive``
            (``dim`` heads of one channel, qkv bias iff ``dim >= 128``, not causal), as the
            official constructor calls resolve.
    """

    def __init__(self, dim: int, inner_dim: int, attention_method: str = "hyper") -> None:
        super().__init__()
        num_heads = dim // 128  # LLMLayer overrides its num_heads argument with this
        if attention_method == "hyper":
            if num_heads < 1:
                raise ValueError(f"attention_method 'hyper' needs hidden_size >= 128, got {dim}")
            self.attn = SelfAttention(dim, num_heads, qkv_bias=True, causal=True)
        elif attention_method == "naive":
            # ViTAttention(dim, dim, num_heads): num_heads=dim, qkv_bias=num_heads, causal dropped
            self.attn = SelfAttention(dim, dim, qkv_bias=bool(num_heads), causal=False)
        else:
            raise ValueError(f"unknown attention_method {attention_method!r}")
        self.input_layernorm = RMSNorm(dim, eps=1e-5)
        self.post_attention_layernorm = RMSNorm(dim, eps=1e-5)
        self.mlp = GatedMLP(dim, inner_dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, L, dim) -> (B, L, dim)."""
        x = x + self.attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class OfficialMambaBlock(nn.Module):
    """The official Mamba ``Block``: ``h = LayerNorm(x); h + Mamba(h)``, optionally right to left.

    The official block adds the mixer output to the *normalised* input (not to ``x``).

    Args:
        dim: channels.
        reverse: flip the sequence around the block.
        d_state: SSM state size (16 in the official head).
    """

    def __init__(self, dim: int, reverse: bool, d_state: int = 16) -> None:
        super().__init__()
        self.reverse = reverse
        self.mixer = Mamba(dim, d_state=d_state)
        self.norm = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: Tensor) -> Tensor:
        """(B, L, dim) -> (B, L, dim)."""
        if self.reverse:
            x = x.flip(1)
        x = self.norm(x)
        x = x + self.mixer(x)[0]
        return x.flip(1) if self.reverse else x


class OfficialContext(nn.Module):
    """The token part of ``LLMClassificationDecoder``: projection, positions, cls token, layers.

    Args:
        in_dim: channels of the last-stage map.
        hidden_size: token channels.
        n_layer: layers.
        attention_method: ``hyper``, ``naive`` or ``mamba``.
        in_context_patches: window length in tokens (<= 0: every token at once).
        mlp_ratio: MLP width multiplier of the attention layers.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_size: int = 768,
        n_layer: int = 2,
        attention_method: str = "hyper",
        in_context_patches: int = -1,
        mlp_ratio: int = 4,
    ) -> None:
        super().__init__()
        if attention_method == "mamba" and in_context_patches > 0:
            raise ValueError(
                "attention_method 'mamba' with in_context_patches > 0 does not run in the official "
                "code (its window loop indexes the Mamba block's tuple output); use -1"
            )
        if 0 < in_context_patches < 2:
            raise ValueError(
                "in_context_patches must be <= 0 or >= 2 (the official stride is half of it)"
            )
        self.hidden_size = hidden_size
        self.attention_method = attention_method
        self.in_context_patches = in_context_patches
        self.input_proj = nn.Linear(in_dim, hidden_size)
        if attention_method == "mamba":
            layers = [OfficialMambaBlock(hidden_size, reverse=i % 2 == 0) for i in range(n_layer)]
        else:
            layers = [
                OfficialLayer(hidden_size, hidden_size * mlp_ratio, attention_method)
                for _ in range(n_layer)
            ]
        self.layers = nn.Sequential(*layers)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        nn.init.normal_(self.cls_token, std=1e-6)

    def tokens(self, fmap: Tensor) -> Tensor:
        """Region tokens with positions, cls token last.

        Args:
            fmap: (B, C, h, w) stitched last-stage map.

        Returns:
            (B, h * w + 1, hidden_size).
        """
        b, _, h, w = fmap.shape
        x = self.input_proj(fmap.flatten(2).transpose(1, 2))  # (B, h w, D)
        x = x + sincos_table(self.hidden_size, h, w).to(x)
        return torch.cat([x, self.cls_token.expand(b, -1, -1)], dim=1)

    def forward(self, fmap: Tensor) -> Tensor:
        """Context over the map; the cls output (the mean over windows when windowed).

        Args:
            fmap: (B, C, h, w) stitched last-stage map.

        Returns:
            (B, hidden_size).
        """
        x = self.tokens(fmap)  # (B, L + 1, D)
        icp = self.in_context_patches
        if icp <= 0 or icp >= x.shape[1]:
            return self.layers(x)[:, -1]
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        outs = []
        for start in range(0, x.shape[1] - 1, icp // 2):  # the official window loop
            # a window reaching the end also holds the first cls token, as officially
            window = torch.cat([x[:, start : start + icp], cls], dim=1)  # (B, <= icp + 1, D)
            outs.append(self.layers(window)[:, -1])
        return torch.stack(outs, dim=1).mean(dim=1)


class OfficialHead(nn.Module):
    """``LayerNorm`` + ``Linear`` on the cls output (the official ``cls`` Sequential).

    Args:
        dim: channels.
        num_classes: outputs (0: no classifier).
    """

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """(B, dim) -> (B, num_classes), or the normalised (B, dim) with ``pre_logits``."""
        x = self.norm(x)
        return x if pre_logits else self.fc(x)


class OfficialPoolHead(nn.Module):
    """The official ``ClassificationDecoder`` (``cls_head: naive``): pool, MLP, norm, classifier.

    Args:
        dim: channels of the last-stage map.
        num_classes: outputs (0: no classifier).
        mlp_ratio: hidden width multiplier.
    """

    def __init__(self, dim: int, num_classes: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim * mlp_ratio)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(dim * mlp_ratio)
        self.fc = nn.Linear(dim * mlp_ratio, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """(B, C, h, w) map or (B, C) pooled -> (B, num_classes) (or (B, C * r) ``pre_logits``)."""
        if x.ndim == 4:
            x = x.mean(dim=(-2, -1))
        x = self.norm(self.act(self.fc1(x)))
        return x if pre_logits else self.fc(x)
