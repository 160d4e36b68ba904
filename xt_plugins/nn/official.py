"""The official xT classification models, their configs and their released checkpoints.

The official xT release (github ``bair-climate-initiative/xT``, Hugging Face
``bair-climate-initiative/xt``) trains Swin-V2 region encoders with an ``LLMClassificationDecoder``
context head (``cls_head: xl``) on iNaturalist 2018 Reptilia. This module rebuilds those models in
this project's terms, so the released ``.ckpt`` files load and give the official logits:

* the region encoder is this project's :class:`~xt_plugins.nn.region.RegionEncoder` (timm Swin-V2,
  ``features_only``); the official ``encoder.model.*`` keys are the same timm names under another
  prefix;
* the context head (:class:`OfficialContext`) is what ``LLMClassificationDecoder`` computes, read
  from the official code (commit 4e79e41) and reproduced as it is:

  - a linear input projection of the stitched last-stage map, plus a fixed 2-D sine-cosine table
    over that map (first half of the channels from the column, second half from the row);
  - a learned cls token appended *after* the region tokens (it gets no position);
  - pre-norm LLaMA-style layers (:class:`OfficialLayer`): RMSNorm (eps 1e-5), attention, RMSNorm,
    a gated GELU MLP. ``num_heads = hidden_size // 128``. ``attention_method: hyper`` is causal
    attention with a qkv bias (HyperAttention is exact below its ``min_seq_len=4096`` keys);
    ``naive`` builds ``ViTAttention(dim, dim, num_heads)``, i.e. ``hidden_size`` heads of
    dimension 1, a qkv bias, and *no* causal mask (ViTAttention ignores ``causal``);
  - ``attention_method: mamba``: blocks ``x = LayerNorm(x); x = x + Mamba(x)`` (the residual is
    the normalised input), even layers scanning right to left, over this project's
    :class:`~xt_plugins.nn.layers.mamba.Mamba` (same parameter names as ``mamba_ssm.Mamba``);
  - ``in_context_patches > 0``: windows of that many tokens with stride half of it (the official
    loop also windows the cls token at the end and appends a fresh one to every window), the mean
    of the windows' cls outputs;
* the classifier (:class:`OfficialHead`) is ``LayerNorm`` + ``Linear`` on the cls output.

``cls_head: naive`` (the released ``nonxl`` Swin baselines) is the official
``ClassificationDecoder``: global average pool, ``Linear(C, C * mlp_ratio)``, GELU, LayerNorm,
``Linear``.

Entry points: :func:`load_official_xt` (a checkpoint and an official config) and the timm pretrained
tags ``xt_<swin>_<head>.inat_reptilia_<size>`` (:data:`OFFICIAL_RELEASES`, built through
:func:`create_official_xt`, weights mapped by :func:`checkpoint_filter_fn`).

.. versionadded:: 0.2
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import PretrainedCfg, build_model_with_cfg
from torch import Tensor, nn

from .context.mamba import Mamba
from .options import XT_OPTIONS
from .region import RegionEncoder

__all__ = [
    "HF_HUB_ID",
    "OFFICIAL_BACKBONES",
    "OFFICIAL_RELEASES",
    "OfficialCheckpointError",
    "OfficialContext",
    "OfficialHead",
    "OfficialLayer",
    "OfficialMambaBlock",
    "OfficialPoolHead",
    "OfficialRelease",
    "OfficialXT",
    "checkpoint_filter_fn",
    "create_official_xt",
    "load_official_xt",
    "map_official_state_dict",
    "official_model_kwargs",
    "official_release",
    "parse_official_config",
    "pretrained_cfgs_with_releases",
    "read_official_checkpoint",
    "sincos_table",
]

#: Hugging Face repository of the released checkpoints.
HF_HUB_ID = "bair-climate-initiative/xt"
#: Official ``backbone_class`` -> the timm model it builds (``xt/models/backbones/swin.py``).
OFFICIAL_BACKBONES: dict[str, str] = {
    "swinv2_tiny_window16_256_timm": "swinv2_tiny_window16_256",
    "swinv2_small_window16_256_timm": "swinv2_small_window16_256",
    "swinv2_base_window16_256_timm": "swinv2_base_window16_256",
    "swinv2_large_window16_256_timm": "swinv2_large_window12to16_192to256",
}
#: What an official config leaves out: ``ModelConfig`` / ``ContextEncoderConfig`` dataclass
#: defaults (``xt/models/build.py``, ``xt/models/context_encoders/__init__.py``), overlaid with
#: ``config/base.yaml``'s ``model`` section (``input_size: 512``, ``cls_head: naive``).
_DEFAULTS: dict[str, Any] = {
    "backbone_class": "swinv2_tiny_window16_256_timm",
    "backbone_kwargs": {},
    "region_size": 512,
    "num_classes": 9999,
    "cls_head": "naive",
    "mlp_ratio": 4,
    "context": {
        "n_layer": 12,
        "hidden_size": 768,
        "attention_method": "hyper",
        "in_context_patches": -1,
    },
}
#: HyperAttention falls back to exact attention up to this many keys (``LLMAttention``).
HYPER_MIN_SEQ_LEN = 4096
#: xT options of this project's XTModel that the official architecture has no use for.
_XT_ONLY_OPTIONS = tuple(k for k in XT_OPTIONS if k not in ("region_size", "region_chunk"))
#: Buffers some timm versions saved with Swin-V2 weights; they are recomputed from the shapes.
_DERIVED_BUFFERS = re.compile(r"\.(relative_position_index|relative_coords_table|attn_mask)$")


class OfficialCheckpointError(RuntimeError):
    """An official xT checkpoint cannot be read or does not fit the model."""


# ----------------------------------------------------------------------------- building blocks
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


# ----------------------------------------------------------------------------- the model
class OfficialXT(nn.Module):
    """An official xT classification model: Swin-V2 regions, stitched, then the official head.

    Args:
        backbone: timm region encoder (``swinv2_tiny_window16_256``, ...).
        region_size: region side in pixels (the official ``backbone.input_size``).
        num_classes: classifier outputs (0: features).
        in_chans: input channels.
        cls_head: ``xl`` (context head) or ``naive`` (pooled MLP head).
        hidden_size: context token channels (``xl``).
        n_layer: context layers (``xl``).
        attention_method: ``hyper``, ``naive`` or ``mamba`` (``xl``).
        in_context_patches: context window in tokens, <= 0 for all at once (``xl``).
        mlp_ratio: MLP width multiplier.
        region_chunk: encode at most this many regions at a time (None: all at once, as
            officially; the result is the same).
        **backbone_kwargs: passed to ``timm.create_model`` (``embed_dim``, ``depths``, ...).

    Input: (B, in_chans, H, W) normalised with the ImageNet mean and std, H and W multiples of
    ``region_size`` (the official code takes square images only). Above 4096 tokens per context
    pass the official HyperAttention switches to a randomised approximation; this model stays exact.
    """

    def __init__(
        self,
        backbone: str = "swinv2_tiny_window16_256",
        region_size: int = 256,
        num_classes: int = 284,
        in_chans: int = 3,
        cls_head: str = "xl",
        hidden_size: int = 768,
        n_layer: int = 2,
        attention_method: str = "hyper",
        in_context_patches: int = -1,
        mlp_ratio: int = 4,
        region_chunk: int | None = None,
        **backbone_kwargs: Any,
    ) -> None:
        super().__init__()
        if cls_head not in ("xl", "naive"):
            raise ValueError(f"cls_head must be 'xl' or 'naive', got {cls_head!r}")
        self.cls_head = cls_head
        self.region_size = region_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.region_chunk = region_chunk
        self.region_encoder = RegionEncoder(
            backbone, region_size=region_size, in_chans=in_chans, **backbone_kwargs
        )
        channels = self.region_encoder.channels[-1]
        if cls_head == "xl":
            self.context: OfficialContext | None = OfficialContext(
                channels, hidden_size, n_layer, attention_method, in_context_patches, mlp_ratio
            )
            self.num_features = self.head_hidden_size = hidden_size
            self.head: nn.Module = OfficialHead(hidden_size, num_classes)
        else:
            self.context = None
            self.num_features = channels
            self.head_hidden_size = channels * mlp_ratio
            self.head = OfficialPoolHead(channels, num_classes, mlp_ratio)

    def forward_regions(self, x: Tensor) -> Tensor:
        """Encode every region and stitch the last stage back onto the image grid.

        Args:
            x: (B, C, H, W), H and W multiples of ``region_size``.

        Returns:
            (B, C_last, H / 32, W / 32) for Swin-V2.
        """
        b, c, height, width = x.shape
        r = self.region_size
        if height % r or width % r or height == 0 or width == 0:
            raise ValueError(
                f"input {height}x{width} is not a grid of {r}-px regions; resize or pad it to "
                f"multiples of {r} (the official model takes square multiples)"
            )
        nh, nw = height // r, width // r
        regions = x.reshape(b, c, nh, r, nw, r).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, r, r)
        step = self.region_chunk or regions.shape[0]
        feats = torch.cat(
            [self.region_encoder(regions[i : i + step])[-1] for i in range(0, len(regions), step)]
        )  # (B nh nw, C', h, w)
        _, cl, h, w = feats.shape
        feats = feats.reshape(b, nh, nw, cl, h, w).permute(0, 3, 1, 4, 2, 5)
        return feats.reshape(b, cl, nh * h, nw * w)

    def forward_features(self, x: Tensor) -> Tensor:
        """Image features before the classifier.

        Args:
            x: (B, C, H, W) image.

        Returns:
            ``xl``: the (B, hidden_size) cls output of the context head (mean over windows);
            ``naive``: the (B, C_last, H / 32, W / 32) stitched map.
        """
        fmap = self.forward_regions(x)
        return fmap if self.context is None else self.context(fmap)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Classify :meth:`forward_features` output (normalised features with ``pre_logits``)."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) image -> (B, num_classes) logits."""
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """The final linear layer (Identity when there is none)."""
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier with a fresh one of ``num_classes`` outputs (0 removes it)."""
        self.num_classes = num_classes
        self.head.fc = (
            nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        )

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters the official optimiser would not decay: cls token, Mamba ``A_log`` / ``D``."""
        return {
            name
            for name, _ in self.named_parameters()
            if name.endswith(("cls_token", ".A_log", ".D"))
        }


# ----------------------------------------------------------------------------- configs
def _resolve_refs(node: Any, root: Mapping[str, Any]) -> Any:
    """Resolve OmegaConf-style ``${a.b}`` references (whole-string ones) against ``root``."""
    if isinstance(node, Mapping):
        return {k: _resolve_refs(v, root) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve_refs(v, root) for v in node]
    if isinstance(node, str):
        m = re.fullmatch(r"\$\{([A-Za-z_][\w.]*)\}", node.strip())
        if m:
            value: Any = root
            for part in m.group(1).split("."):
                if not isinstance(value, Mapping) or part not in value:
                    return node
                value = value[part]
            return _resolve_refs(value, root)
    return node


def _from_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise OfficialCheckpointError(f"{path}: cannot read the official config ({err})") from err
    if not isinstance(doc, Mapping) or not isinstance(doc.get("model"), Mapping):
        raise OfficialCheckpointError(f"{path}: no 'model' section; pass an official xT config")
    model = _resolve_refs(doc, doc)["model"]
    backbone = model.get("backbone") or {}
    out: dict[str, Any] = {
        k: model[k]
        for k in ("backbone_class", "num_classes", "cls_head", "mlp_ratio")
        if k in model
    }
    if "input_size" in backbone:
        out["region_size"] = backbone["input_size"]
    data = doc.get("data") or {}
    if isinstance(data, Mapping) and isinstance(data.get("crop_size"), int):
        out["image_size"] = data["crop_size"]  # the training / evaluation image side
    out["context"] = dict(model.get("context") or {})
    return out


def parse_official_config(config: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    """Normalise an official xT config to the fixture layout, defaults filled in.

    Args:
        config: a dict shaped like the fixtures' ``official_config`` (``backbone_class``,
            ``backbone_kwargs``, ``region_size``, ``num_classes``, ``cls_head``, ``mlp_ratio``,
            ``context: {n_layer, hidden_size, attention_method, in_context_patches}``), a dict
            holding one under ``official_config``, or the path of an official YAML config
            (``config/swin-t/swin_v2_tiny_1e-4_hyper_512_256.yaml``; ``${data.num_classes}``
            references are resolved, base configs are replaced by the official defaults, and
            ``data.crop_size`` is kept as ``image_size``).

    Returns:
        The config with every key set.

    Raises:
        OfficialCheckpointError: for an unreadable YAML file or one without a ``model`` section.
    """
    if isinstance(config, (str, Path)):
        config = _from_yaml(Path(config))
    if "official_config" in config:
        config = config["official_config"]
    out = {k: v for k, v in _DEFAULTS.items() if k != "context"}
    out.update({k: v for k, v in config.items() if k != "context"})
    out["backbone_kwargs"] = dict(out.get("backbone_kwargs") or {})
    context = dict(_DEFAULTS["context"])
    context.update(
        {k: v for k, v in (config.get("context") or {}).items() if k in _DEFAULTS["context"]}
    )
    out["context"] = context
    return out


def official_model_kwargs(config: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    """The :class:`OfficialXT` arguments of an official config (:func:`parse_official_config`).

    Raises:
        ValueError: for a ``backbone_class`` this module does not know.
    """
    cfg = parse_official_config(config)
    name = cfg["backbone_class"]
    if name not in OFFICIAL_BACKBONES:
        raise ValueError(
            f"backbone_class {name!r} is not an official Swin-V2 xT backbone; "
            f"known: {sorted(OFFICIAL_BACKBONES)}"
        )
    ctx = cfg["context"]
    return dict(
        backbone=OFFICIAL_BACKBONES[name],
        region_size=int(cfg["region_size"]),
        num_classes=int(cfg["num_classes"]),
        cls_head=cfg["cls_head"],
        hidden_size=int(ctx["hidden_size"]),
        n_layer=int(ctx["n_layer"]),
        attention_method=ctx["attention_method"],
        in_context_patches=int(ctx["in_context_patches"]),
        mlp_ratio=int(cfg["mlp_ratio"]),
        **cfg["backbone_kwargs"],
    )


# ----------------------------------------------------------------------------- checkpoints
#: Official key prefix -> ours, per head type (first match wins).
_KEY_MAP: dict[str, tuple[tuple[str, str], ...]] = {
    "xl": (
        ("encoder.model.", "region_encoder.backbone."),
        ("decoder.input_proj.", "context.input_proj."),
        ("decoder.cls_token", "context.cls_token"),
        ("decoder.layers.", "context.layers."),
        ("decoder.cls.0.", "head.norm."),
        ("decoder.cls.1.", "head.fc."),
    ),
    "naive": (
        ("encoder.model.", "region_encoder.backbone."),
        ("decoder.layers.0.", "head.fc1."),
        ("decoder.layers.2.", "head.norm."),
        ("decoder.layers.3.", "head.fc."),
    ),
}
_STAGE = re.compile(r"^(region_encoder\.backbone\.layers)\.(\d+)\.")


def map_official_state_dict(state: Mapping[str, Tensor], cls_head: str = "xl") -> dict[str, Tensor]:
    """Rename an official xT state dict to :class:`OfficialXT` names.

    ``module.`` (DDP) prefixes are stripped, ``encoder.model.*`` becomes
    ``region_encoder.backbone.*`` (``layers.N`` -> ``layers_N`` for older timm layouts),
    ``decoder.*`` becomes ``context.*`` / ``head.*``; derived Swin buffers are dropped.
    Keys already in our layout pass unchanged; unknown keys pass unchanged (so they are reported).

    Args:
        state: the checkpoint's ``state_dict``.
        cls_head: ``xl`` or ``naive``.

    Returns:
        The renamed tensors.
    """
    prefixes = _KEY_MAP[cls_head]
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        while key.startswith(("module.", "_orig_mod.")):
            key = key.partition(".")[2]
        for src, dst in prefixes:
            if key.startswith(src):
                key = dst + key[len(src) :]
                break
        key = _STAGE.sub(r"\1_\2.", key)
        if _DERIVED_BUFFERS.search(key):
            continue
        out[key] = value
    return out


def read_official_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """Read an official ``.ckpt`` safely (``torch.load(weights_only=True)``) and return its weights.

    Args:
        path: ``{"epoch", "state_dict", "optimizer_state_dict", "metrics"}`` file (or a plain
            state dict).

    Returns:
        The ``state_dict`` (keys as saved, ``module.`` included).

    Raises:
        FileNotFoundError: if the file does not exist.
        OfficialCheckpointError: if it cannot be read with ``weights_only=True`` (a pickle that
            needs code to load is refused, never run) or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found; download it from {HF_HUB_ID}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickles needing arbitrary globals are refused on purpose
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OfficialCheckpointError(
            f"{path}: refused by torch.load(weights_only=True) ({first}); "
            "only plain tensor checkpoints are loaded"
        ) from err
    state = obj.get("state_dict", obj) if isinstance(obj, Mapping) else obj
    if (
        not isinstance(state, Mapping)
        or not state
        or not all(isinstance(v, Tensor) for v in state.values())
    ):
        raise OfficialCheckpointError(f"{path}: no 'state_dict' of tensors in this checkpoint")
    return dict(state)


def _summary(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def _check_fit(
    model: nn.Module,
    state: Mapping[str, Tensor],
    source: str,
    skip_shape: tuple[str, ...] = (),
    allow_missing: tuple[str, ...] = (),
) -> None:
    """Raise one line naming ``source`` if ``state`` does not fit ``model`` exactly."""
    target = model.state_dict()
    missing = [k for k in target if k not in state and not k.startswith(allow_missing)]
    unexpected = [k for k in state if k not in target]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in target.items()
        if k in state and state[k].shape != v.shape and not k.startswith(skip_shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {_summary(missing)}")
    if unexpected:
        problems.append(f"unexpected {_summary(unexpected)}")
    if shapes:
        problems.append(f"shape (file vs model) {_summary(shapes, 3)}")
    if problems:
        raise OfficialCheckpointError(
            f"{source}: does not fit this official xT config ({'; '.join(problems)}); "
            "check that the config is the one the checkpoint was trained with"
        )


def _default_cfg(kwargs: Mapping[str, Any], image_size: int | None = None) -> dict[str, Any]:
    r = kwargs.get("region_size", 256)
    side = image_size or 2 * r
    return dict(
        num_classes=kwargs.get("num_classes", 284),
        input_size=(3, side, side),
        min_input_size=(3, r, r),
        pool_size=None,
        crop_pct=1.0,
        interpolation="bilinear",
        fixed_input_size=False,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        first_conv="region_encoder.backbone.patch_embed.proj",
        classifier="head.fc",
        origin_url="https://github.com/bair-climate-initiative/xT",
        paper_ids="arXiv:2403.01915",
    )


def load_official_xt(
    checkpoint: str | Path, config: Mapping[str, Any] | str | Path, **overrides: Any
) -> OfficialXT:
    """Build the official xT model of ``config`` and load an official ``.ckpt`` into it.

    Args:
        checkpoint: an official checkpoint (``{"epoch", "state_dict" with "module." keys,
            "optimizer_state_dict", "metrics"}``), read with ``torch.load(weights_only=True)``.
        config: the official config it was trained with: a dict shaped like the fixtures'
            ``official_config``, or the path of an official YAML config.
        **overrides: :class:`OfficialXT` arguments that replace the config's (``region_chunk``).

    Returns:
        The model in eval mode; ``model(x)`` gives the logits for an ImageNet-normalised
        (B, 3, H, W) image, H and W multiples of the region size. ``model.pretrained_cfg`` holds
        timm's data config (mean, std, input size).

    Raises:
        FileNotFoundError: if the checkpoint does not exist.
        OfficialCheckpointError: one line naming the file, for an unsafe or unreadable file or
            missing / unexpected / mis-shaped weights.

    Example:
        >>> model = load_official_xt("swin-t-hyper-512-256-top1.ckpt",
        ...                          "config/swin-t/swin_v2_tiny_1e-4_hyper_512_256.yaml")
    """
    config = parse_official_config(config)
    kwargs = official_model_kwargs(config)
    kwargs.update(overrides)
    state = map_official_state_dict(read_official_checkpoint(checkpoint), kwargs["cls_head"])
    cfg = _default_cfg(kwargs, config.get("image_size"))
    model = build_model_with_cfg(
        OfficialXT, "xt_official", pretrained=False, pretrained_cfg=cfg, **kwargs
    )
    _check_fit(model, state, str(checkpoint))
    model.load_state_dict(state, strict=True)
    return model.eval()


# ----------------------------------------------------------------------------- timm tags
@dataclass(frozen=True)
class OfficialRelease:
    """One released checkpoint: where it lives and the official config it was trained with.

    Attributes:
        filename: path inside :data:`HF_HUB_ID`.
        backbone_class: official backbone.
        region_size: region side (the official ``backbone.input_size``).
        input_size: training and evaluation image side (``data.crop_size``).
        attention_method: ``hyper``, ``mamba`` or ``naive`` (for ``cls_head: naive``, unused).
        n_layer: context layers.
        cls_head: ``xl`` or ``naive``.
        top1: top-1 accuracy reported by the official README (iNaturalist 2018 Reptilia val).
    """

    filename: str
    backbone_class: str
    region_size: int
    input_size: int
    attention_method: str
    n_layer: int
    cls_head: str
    top1: float

    @property
    def config(self) -> dict[str, Any]:
        """The official config (fixture layout) of this release."""
        return {
            "backbone_class": self.backbone_class,
            "region_size": self.region_size,
            "num_classes": 284,
            "cls_head": self.cls_head,
            "mlp_ratio": 4,
            "context": {
                "n_layer": self.n_layer,
                "hidden_size": 768,
                "attention_method": self.attention_method,
                "in_context_patches": -1,
            },
        }


def _releases() -> dict[str, OfficialRelease]:
    # The official README's "Pretrained Models" table (files under bair-climate-initiative/xt);
    # the configs are config/swin-*/swin_v2_*_{hyper,mamba}_{512,256}_256.yaml (hidden 768,
    # 2 hyper / 4 mamba layers, in_context_patches -1). "XL" rows have no released file.
    swin = {"t": "tiny", "s": "small", "b": "base", "l": "large"}
    table = [
        ("t", "hyper", 512, 60.56),
        ("t", "mamba", 512, 61.97),
        ("s", "hyper", 512, 63.62),
        ("b", "hyper", 512, 64.08),
        ("b", "mamba", 512, 63.73),
        ("l", "hyper", 512, 72.42),
        ("l", "mamba", 512, 73.36),
        ("t", "hyper", 256, 52.93),
        ("s", "hyper", 256, 57.04),
        ("b", "hyper", 256, 55.52),
        ("l", "hyper", 256, 67.84),
    ]
    out = {}
    for s, head, size, top1 in table:
        out[f"xt_swinv2_{swin[s]}_{head}.inat_reptilia_{size}"] = OfficialRelease(
            filename=f"swin-{s}/weights/swin-{s}-{head}-{size}-256-top1.ckpt",
            backbone_class=f"swinv2_{swin[s]}_window16_256_timm",
            region_size=256,
            input_size=size,
            attention_method=head,
            n_layer=4 if head == "mamba" else 2,
            cls_head="xl",
            top1=top1,
        )
    return out


#: ``"<architecture>.<tag>"`` -> the released checkpoint behind that timm pretrained tag.
OFFICIAL_RELEASES: dict[str, OfficialRelease] = _releases()


def _release_cfg(release: OfficialRelease) -> dict[str, Any]:
    cfg = _default_cfg({"region_size": release.region_size}, release.input_size)
    cfg.update(
        hf_hub_id=HF_HUB_ID,
        hf_hub_filename=release.filename,
        description=(
            f"Official xT ({release.attention_method} context head) on iNaturalist 2018 Reptilia, "
            f"{release.input_size} px images of {release.region_size} px regions"
        ),
        notes=(
            f"top-1 {release.top1} (official README)",
            f"official backbone {release.backbone_class}; built by xt_plugins.nn.official",
            "weights: Hugging Face bair-climate-initiative/xt (see its model card for terms)",
        ),
    )
    return cfg


def pretrained_cfgs_with_releases(cfgs: Mapping[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Add the release tags to a ``generate_default_cfgs`` input, keeping the untagged defaults.

    timm makes the first tag with weights an architecture's default; the released tags come first
    and the untagged entry of each such architecture is marked ``arch.*`` (timm's explicit
    default), so ``timm.create_model("xt_swinv2_tiny_hyper")`` keeps building this project's
    model and only ``xt_swinv2_tiny_hyper.inat_reptilia_512`` builds the official one.

    Args:
        cfgs: ``"arch"`` -> pretrained cfg dict of this project's models.

    Returns:
        The ordered dict to pass to ``timm.models.generate_default_cfgs``.
    """
    released = {name.partition(".")[0] for name in OFFICIAL_RELEASES}
    out = {name: _release_cfg(r) for name, r in OFFICIAL_RELEASES.items()}
    out.update({(f"{k}.*" if k in released else k): v for k, v in cfgs.items()})
    return out


def official_release(variant: str, pretrained_cfg: Any) -> str | None:
    """The ``"arch.tag"`` of a released checkpoint that a timm factory call asks for, else None.

    Args:
        variant: architecture name (``xt_swinv2_tiny_hyper``).
        pretrained_cfg: what timm passes the factory: a tag string, a dict or a
            :class:`~timm.models.PretrainedCfg` (its ``tag``), or None.
    """
    if isinstance(pretrained_cfg, str):
        tag = pretrained_cfg
    elif isinstance(pretrained_cfg, Mapping):
        tag = pretrained_cfg.get("tag")
    elif isinstance(pretrained_cfg, PretrainedCfg):
        tag = pretrained_cfg.tag
    else:
        tag = None
    name = f"{variant}.{tag}"
    return name if tag and name in OFFICIAL_RELEASES else None


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: OfficialXT) -> dict[str, Tensor]:
    """The timm ``pretrained_filter_fn``: unwrap an official checkpoint and map it onto ``model``.

    timm hands over what it read with ``weights_only=True``: the whole checkpoint (Hugging Face
    route) or its ``state_dict`` with ``module.`` already stripped (``file=`` route).

    Raises:
        OfficialCheckpointError: one line naming the weight source if the keys do not fit.
    """
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
        state_dict = state_dict["state_dict"]
    state = map_official_state_dict(state_dict, model.cls_head)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    source = cfg.get("file") or f"{cfg.get('hf_hub_id')}/{cfg.get('hf_hub_filename')}"
    # timm adapts the stem to in_chans and drops the classifier for a new num_classes afterwards
    first_conv, classifier = cfg.get("first_conv") or "", cfg.get("classifier") or ""
    skip = tuple(p + "." for p in (first_conv, classifier) if p)
    missing_ok = (classifier + ".",) if classifier and model.num_classes == 0 else ()
    if missing_ok:  # a model without classifier: the file's classifier is not needed
        state = {k: v for k, v in state.items() if not k.startswith(missing_ok)}
    _check_fit(model, state, str(source), skip_shape=skip)
    return state


def create_official_xt(variant: str, pretrained: bool = False, **kwargs: Any) -> OfficialXT:
    """Build the official xT model behind a release tag through timm (the timm factory branch).

    Args:
        variant: architecture name (``xt_swinv2_tiny_hyper``).
        pretrained: load the released weights (downloads through timm, or
            ``pretrained_cfg_overlay=dict(file=PATH)`` for a local ``.ckpt``).
        **kwargs: ``pretrained_cfg`` (the tag), ``pretrained_cfg_overlay``, ``cache_dir``, and
            :class:`OfficialXT` arguments overriding the release config (``num_classes``,
            ``in_chans``, ``region_chunk``; ``embed_dim`` etc. for tests).

    Returns:
        The model (train mode, as timm returns models).

    Raises:
        ValueError: for ``features_only`` (the official models are classifiers) or an arch
            without that tag.
    """
    name = official_release(variant, kwargs.get("pretrained_cfg"))
    if name is None:
        raise ValueError(f"{variant}: no released official xT checkpoint for this pretrained tag")
    if kwargs.pop("features_only", False):
        raise ValueError(
            f"{name}: the official xT checkpoints are classifiers; features_only is not supported"
        )
    kwargs.pop("pretrained_region", None)
    for key in _XT_ONLY_OPTIONS:  # XTModel options (e.g. from the xT TorchGeo tasks)
        value = kwargs.pop(key, XT_OPTIONS[key].default)
        if value != XT_OPTIONS[key].default:
            raise ValueError(
                f"{name}: {key}={value!r} does not apply to the official xT model "
                f"(it takes region_size and region_chunk); leave it at {XT_OPTIONS[key].default!r}"
            )
    model_kwargs = official_model_kwargs(OFFICIAL_RELEASES[name].config)
    model_kwargs.update(kwargs)
    return build_model_with_cfg(
        OfficialXT,
        variant,
        pretrained=pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        **model_kwargs,
    )
