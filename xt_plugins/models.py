"""timm model factories ``xt_<backbone>_<context>`` and the :func:`create_model` API.

Importing this module registers every name with timm, so ``timm.create_model``,
TorchGeo's ``Classification(model=...)`` and smp's ``tu-xt_...`` encoders build xT models.

.. versionadded:: 0.1
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .nn.context import CONTEXT_ENCODERS
from .nn.region import RegionEncoder
from .nn.xt import XTModel

__all__ = ["create_model", "BACKBONES", "CONTEXTS", "model_names"]

#: Short region-encoder names used in model names -> timm backbone.
BACKBONES: dict[str, str] = {
    "swinv2_tiny": "swinv2_tiny_window16_256",
    "swinv2_small": "swinv2_small_window16_256",
    "swinv2_base": "swinv2_base_window16_256",
    "convnext_tiny": "convnext_tiny",
    "convnext_base": "convnext_base",
    "hiera_base": "hiera_base_224",
}
#: Context encoders that get a registered model name for every backbone.
CONTEXTS: tuple[str, ...] = ("none", "txl", "hyper", "mamba")

_MODEL_KWARGS = (
    "context_dim",
    "context_kwargs",
    "drop_rate",
    "region_chunk",
    "grad_ratio",
    "checkpoint_regions",
    "checkpoint_context",
)


def create_model(
    region_encoder: str,
    context: str = "mamba",
    *,
    region_size: int = 256,
    num_classes: int = 0,
    in_chans: int = 3,
    context_pool: int | None = None,
    pretrained_region: bool | str | Path | None = None,
    **region_kwargs: Any,
) -> XTModel:
    """Build an xT model from a region encoder and a context encoder.

    Args:
        region_encoder: short name (``swinv2_tiny``, ``convnext_tiny``, ``hiera_base``, ...)
            or any timm model name that supports ``features_only``.
        context: ``none``, ``txl``, ``hyper`` or ``mamba``.
        region_size: region side in pixels.
        num_classes: classifier outputs (0: pooled features).
        in_chans: input channels.
        context_pool: pool each region to ``k x k`` context tokens (None: all last-stage tokens).
        pretrained_region: ``True`` loads timm's pretrained backbone weights (downloads);
            a path loads a local safetensors / torch (``weights_only``) file.
        **region_kwargs: ``context_dim``, ``context_kwargs``, ``drop_rate``, ``region_chunk``,
            ``grad_ratio``, ``checkpoint_regions``, ``checkpoint_context`` go to
            :class:`XTModel`; everything else to ``timm.create_model`` for the backbone (e.g.
            ``embed_dim``, ``depths``).

    Returns:
        The model.

    Raises:
        KeyError: for an unknown context encoder.
    """
    if context not in CONTEXT_ENCODERS:
        raise KeyError(f"unknown context encoder {context!r}; known: {sorted(CONTEXT_ENCODERS)}")
    model_kwargs = {k: region_kwargs.pop(k) for k in _MODEL_KWARGS if k in region_kwargs}
    region_kwargs.pop("global_pool", None)
    backbone = BACKBONES.get(region_encoder, region_encoder)
    weights = (
        None
        if isinstance(pretrained_region, bool) or pretrained_region is None
        else pretrained_region
    )
    encoder = RegionEncoder(
        backbone,
        region_size=region_size,
        in_chans=in_chans,
        pretrained=pretrained_region is True,
        weights=weights,
        **region_kwargs,
    )
    return XTModel(
        encoder, context, num_classes=num_classes, context_pool=context_pool, **model_kwargs
    )


def model_names() -> list[str]:
    """All registered xT model names."""
    return [f"xt_{b}_{c}" for b in BACKBONES for c in CONTEXTS]


def _cfg(backbone: str, context: str) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 1024, 1024),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "region_encoder.backbone",
        "classifier": "head.fc",
        "license": "mit",
        "notes": (f"region encoder {BACKBONES[backbone]}, context encoder {context}",),
        "paper_ids": "arXiv:2403.01915",
    }


default_cfgs = generate_default_cfgs(
    {f"xt_{b}_{c}": _cfg(b, c) for b in BACKBONES for c in CONTEXTS}
)


def _build(backbone: str, context: str, **kwargs: Any) -> XTModel:
    return create_model(backbone, context, **kwargs)


def _create_xt(variant: str, pretrained: bool = False, **kwargs: Any) -> XTModel:
    """Build through timm; ``pretrained`` means the region encoder's timm weights."""
    _, _, rest = variant.partition("xt_")
    backbone, _, context = rest.rpartition("_")
    kwargs.setdefault("pretrained_region", pretrained or None)
    return build_model_with_cfg(
        _build,
        variant,
        pretrained=False,
        feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2, 3)),
        backbone=backbone,
        context=context,
        **kwargs,
    )


def _make_factory(name: str):
    def factory(pretrained: bool = False, **kwargs: Any) -> XTModel:
        return _create_xt(name, pretrained=pretrained, **kwargs)

    factory.__name__ = factory.__qualname__ = name
    factory.__module__ = __name__
    factory.__doc__ = f"xT model {name} (see :func:`xt_plugins.create_model`)."
    return factory


for _name in model_names():
    setattr(sys.modules[__name__], _name, register_model(_make_factory(_name)))
