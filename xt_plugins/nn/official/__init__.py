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

The package's rooms: :mod:`.config` (official configs, YAML, the release table), :mod:`.layers`
(the context head's layers and the classifier heads), :mod:`.model` (:class:`OfficialXT`),
:mod:`.checkpoint` (safe reading, key mapping, timm's filter) and :mod:`.build` (the loader and
the timm tags).

.. versionadded:: 0.2
"""

from __future__ import annotations

from .build import (
    create_official_xt,
    load_official_xt,
    official_release,
    pretrained_cfgs_with_releases,
)
from .checkpoint import checkpoint_filter_fn, map_official_state_dict, read_official_checkpoint
from .config import (
    HF_HUB_ID,
    OFFICIAL_BACKBONES,
    OFFICIAL_RELEASES,
    OfficialCheckpointError,
    OfficialRelease,
    official_model_kwargs,
    parse_official_config,
)
from .layers import HYPER_MIN_SEQ_LEN as HYPER_MIN_SEQ_LEN  # importable here, as before the split
from .layers import GatedMLP as GatedMLP
from .layers import (
    OfficialContext,
    OfficialHead,
    OfficialLayer,
    OfficialMambaBlock,
    OfficialPoolHead,
    sincos_table,
)
from .layers import RMSNorm as RMSNorm
from .layers import SelfAttention as SelfAttention
from .model import OfficialXT

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
