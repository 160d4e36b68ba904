"""Optimizer conventions of :class:`~xt_plugins.nn.XTModel`: no-decay names, LR-decay groups.

.. versionadded:: 0.2
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from .xt import XTModel

__all__ = ["no_weight_decay_names", "weight_decay_groups", "xt_group_matcher", "xt_no_weight_decay"]

#: Parameter names (last component) that no optimizer should decay: Mamba's state matrix and
#: skip, positional embeddings / scales, class and memory tokens.
_NO_DECAY_NAMES = frozenset(
    {
        "A_log",
        "D",
        "cls_token",
        "reg_token",
        "pos_embed",
        "absolute_pos_embed",
        "logit_scale",
        "relative_position_bias_table",
    }
)
#: Module path parts whose parameters are positional projections (never decayed).
_NO_DECAY_MODULES = re.compile(r"(^|\.)(pos|pos_proj|pos_embed|cpb_mlp|rel_pos\w*)(\.|$)")


def xt_no_weight_decay(model: XTModel) -> set[str]:
    """Names of parameters that must not be weight-decayed (timm's convention).

    Mamba's ``A_log`` and ``D``, biases, every normalisation layer's parameters,
    positional projections / embeddings, class tokens and the region encoder's own
    exemptions (Swin's ``logit_scale``, relative-position tables and ``cpb_mlp``).
    ``timm.optim.create_optimizer_v2`` reads this; with
    ``param_groups_weight_decay(model, wd, no_weight_decay_list=model.no_weight_decay())``
    (what :func:`weight_decay_groups` does) they land in the ``weight_decay=0`` group.
    """
    norm_types = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)
    norms = {name for name, m in model.named_modules() if isinstance(m, norm_types)}
    norms |= {name for name, m in model.named_modules() if "norm" in type(m).__name__.lower()}
    out = set()
    for name, _ in model.named_parameters():
        module, _, leaf = name.rpartition(".")
        if (
            leaf in _NO_DECAY_NAMES
            or leaf == "bias"
            or leaf.endswith("_bias")
            or module in norms
            or _NO_DECAY_MODULES.search(module)
        ):
            out.add(name)
    return out


def xt_group_matcher(model: XTModel) -> dict[str, Any]:
    """Parameter groups for layer-wise learning-rate decay (timm's convention).

    The region encoder's first child is the stem; each further child of the backbone
    (stages) is one block, then the context encoder, then the head (timm puts the
    unmatched head last).

    Returns:
        ``{"stem": regex, "blocks": [(regex, (ordinal,)), ...]}`` for
        ``timm.optim.param_groups_layer_decay``.
    """
    encoder = model.region_encoder
    module: nn.Module = getattr(encoder, "backbone", encoder)
    prefix = "region_encoder." + ("backbone." if module is not encoder else "")
    children = [n for n, c in module.named_children() if any(True for _ in c.parameters())]
    while len(children) == 1:  # a wrapper (e.g. timm's FeatureGetterNet.model)
        prefix += children[0] + "."
        module = getattr(module, children[0])
        children = [n for n, c in module.named_children() if any(True for _ in c.parameters())]
    stem = "^" + re.escape(prefix) + "(?:" + "|".join(map(re.escape, children[:1])) + r")\b"
    blocks = [("^" + re.escape(prefix + name) + r"\b", (i,)) for i, name in enumerate(children[1:])]
    # direct parameters of the backbone (e.g. a positional embedding) go with the stem
    direct = [n for n, _ in module.named_parameters(recurse=False)]
    if direct:
        stem = f"{stem}|^{re.escape(prefix)}(?:" + "|".join(map(re.escape, direct)) + ")$"
    n = len(blocks)
    blocks += [(r"^context_in\b|^context\.", (n,)), (r"^context_out\b", (n + 1,))]
    return {"stem": stem, "blocks": blocks}


def no_weight_decay_names(module: nn.Module) -> set[str]:
    """Full names of the parameters that must not be decayed, over every XTModel inside.

    Args:
        module: an :class:`XTModel`, or anything holding one (a TorchGeo task, an smp model
            on an xT encoder, a detector).

    Returns:
        Parameter names as ``module.named_parameters()`` spells them.
    """
    from .xt import XTModel

    names: set[str] = set()
    for prefix, sub in module.named_modules():
        if isinstance(sub, XTModel):
            lead = f"{prefix}." if prefix else ""
            names |= {lead + n for n in sub.no_weight_decay()}
    return names


def weight_decay_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Optimizer parameter groups: ``weight_decay`` for weights, 0 for the exempt ones.

    timm's ``param_groups_weight_decay`` with :func:`no_weight_decay_names` as the list
    (biases and other 1-D parameters are exempt as well). Use it for any optimizer::

        torch.optim.AdamW(weight_decay_groups(model, 0.05), lr=1e-4)

    Args:
        module: the model (or a module holding xT models).
        weight_decay: decay of the decayed group.

    Returns:
        ``[{"params": [...], "weight_decay": 0.0}, {"params": [...], "weight_decay": wd}]``.
    """
    from timm.optim import param_groups_weight_decay

    return param_groups_weight_decay(
        module, weight_decay, no_weight_decay_list=no_weight_decay_names(module)
    )
