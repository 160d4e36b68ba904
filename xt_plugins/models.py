"""timm model factories ``xt_<backbone>_<context>`` and the :func:`create_model` API.

Importing this module registers every name with timm, so ``timm.create_model``,
TorchGeo's ``Classification(model=...)`` and smp's ``tu-xt_...`` encoders build xT models.

.. versionadded:: 0.1
"""

from __future__ import annotations

import os
import sys
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .nn.context import CONTEXT_ENCODERS
from .nn.official import create_official_xt, official_release, pretrained_cfgs_with_releases
from .nn.options import XT_OPTIONS, split_options
from .nn.region import RegionEncoder
from .nn.xt import XTModel

__all__ = [
    "BACKBONES",
    "CONTEXTS",
    "create_model",
    "model_names",
    "region_encoder_and_options",
]

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


def region_encoder_and_options(
    region_encoder: str,
    *,
    region_size: int = XT_OPTIONS["region_size"].default,
    in_chans: int = 3,
    pretrained_region: bool | str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> tuple[RegionEncoder, dict[str, Any]]:
    """The one builder behind :func:`create_model` and :class:`~xt_plugins.monai.XTNet`.

    Args:
        region_encoder: short name (:data:`BACKBONES`) or any timm model name.
        region_size: region side in pixels.
        in_chans: input channels.
        pretrained_region: ``True`` loads timm's pretrained backbone weights (downloads); a
            path loads a local safetensors / torch (``weights_only``) file.
        **kwargs: xT options (:data:`~xt_plugins.nn.options.XT_OPTIONS`) and backbone
            options for ``timm.create_model`` (e.g. ``embed_dim``, ``depths``).

    Returns:
        The region encoder and the keyword arguments for :class:`XTModel`.
    """
    model_kwargs, backbone_kwargs = split_options(kwargs)
    weights = None if pretrained_region in (None, True, False) else pretrained_region
    encoder = RegionEncoder(
        BACKBONES.get(region_encoder, region_encoder),
        region_size=region_size,
        in_chans=in_chans,
        pretrained=pretrained_region is True,
        weights=weights,
        **backbone_kwargs,
    )
    return encoder, model_kwargs


def create_model(
    region_encoder: str,
    context: str = "mamba",
    *,
    region_size: int = XT_OPTIONS["region_size"].default,
    num_classes: int = 0,
    in_chans: int = 3,
    pretrained_region: bool | str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> XTModel:
    """Build an xT model from a region encoder and a context encoder.

    Args:
        region_encoder: short name (``swinv2_tiny``, ``convnext_tiny``, ``hiera_base``, ...)
            or any timm model name that supports ``features_only``.
        context: ``none``, ``txl``, ``hyper`` or ``mamba``.
        region_size: region side in pixels.
        num_classes: classifier outputs (0: pooled features).
        in_chans: input channels.
        pretrained_region: ``True`` loads timm's pretrained backbone weights (downloads);
            a path loads a local safetensors / torch (``weights_only``) file.
        **kwargs: the xT options (``context_pool``, ``context_dim``, ``context_kwargs``,
            ``drop_rate``, ``global_pool``, ``region_chunk``, ``grad_ratio``,
            ``checkpoint_regions``, ``checkpoint_context``: see
            :data:`xt_plugins.nn.options.XT_OPTIONS`); everything else goes to
            ``timm.create_model`` for the backbone (e.g. ``embed_dim``, ``depths``).

    Returns:
        The model.

    Raises:
        KeyError: for an unknown context encoder.
    """
    if context not in CONTEXT_ENCODERS:
        raise KeyError(f"unknown context encoder {context!r}; known: {sorted(CONTEXT_ENCODERS)}")
    encoder, model_kwargs = region_encoder_and_options(
        region_encoder,
        region_size=region_size,
        in_chans=in_chans,
        pretrained_region=pretrained_region,
        **kwargs,
    )
    return XTModel(encoder, context, num_classes=num_classes, **model_kwargs)


def model_names() -> list[str]:
    """All registered xT model names."""
    return [f"xt_{b}_{c}" for b in BACKBONES for c in CONTEXTS]


#: Stem convolution of each backbone family inside an XTModel (timm adapts ``in_chans``
#: through it when loading pretrained weights); checked against the built models in tests
#: and recomputed from the built model by the factory.
_FIRST_CONV: dict[str, str] = {
    "swinv2": "region_encoder.backbone.patch_embed.proj",
    "convnext": "region_encoder.backbone.stem_0",
    "hiera": "region_encoder.backbone.model.patch_embed.proj",
}


def _cfg(backbone: str, context: str) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 1024, 1024),
        "pool_size": (32, 32),  # forward_features at input_size: stride 32
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": _FIRST_CONV[BACKBONES[backbone].partition("_")[0]],
        "classifier": "head.fc",
        "license": "mit",
        "notes": (f"region encoder {BACKBONES[backbone]}, context encoder {context}",),
        "paper_ids": "arXiv:2403.01915",
    }


# --- released official xT checkpoints: timm pretrained tags (xt_plugins.nn.official) ---------
#: Region encoders that have released official xT weights but no ``xt_<backbone>_<context>``
#: family here (not in :data:`BACKBONES` / :func:`model_names`): only their released heads are
#: registered, untagged they build this project's model like every other name.
RELEASE_BACKBONES: dict[str, str] = {"swinv2_large": "swinv2_large_window12to16_192to256"}
_RELEASE_ONLY_NAMES = ("xt_swinv2_large_hyper", "xt_swinv2_large_mamba")


def _release_only_cfg(name: str) -> dict[str, Any]:
    backbone, _, context = name[3:].rpartition("_")
    notes = (f"region encoder {RELEASE_BACKBONES[backbone]}, context encoder {context}",)
    return {**_cfg("swinv2_base", context), "notes": notes}


default_cfgs = generate_default_cfgs(
    pretrained_cfgs_with_releases(
        {
            **{f"xt_{b}_{c}": _cfg(b, c) for b in BACKBONES for c in CONTEXTS},
            **{name: _release_only_cfg(name) for name in _RELEASE_ONLY_NAMES},
        }
    )
)


def _build(backbone: str, context: str, **kwargs: Any) -> XTModel:
    return create_model(backbone, context, **kwargs)


def _create_xt(variant: str, pretrained: bool = False, **kwargs: Any) -> XTModel:
    """Build through timm; ``pretrained`` means the region encoder's timm weights.

    ``features_only=True`` gives timm's ``getter`` extractor (``forward_intermediates``);
    ``feature_cls="hook"`` hooks the stitched maps (``feature_taps``); ``"list"`` and
    ``"dict"`` use the hook extractor too (an xT model is not a chain of its children).
    A ``feature_cfg`` given by the caller updates the factory's own.
    """
    if official_release(variant, kwargs.get("pretrained_cfg")):  # a released official xT tag
        return create_official_xt(variant, pretrained=pretrained, **kwargs)
    _, _, rest = variant.partition("xt_")
    backbone, _, context = rest.rpartition("_")
    backbone = RELEASE_BACKBONES.get(backbone, backbone)
    kwargs.setdefault("pretrained_region", pretrained or None)
    feature_cfg = dict(feature_cls="getter", out_indices=(0, 1, 2, 3))
    feature_cfg.update(kwargs.pop("feature_cfg", None) or {})
    if "feature_cls" in kwargs:
        feature_cfg["feature_cls"] = kwargs.pop("feature_cls")
    kind = str(feature_cfg["feature_cls"]).lower()
    if kind in ("list", "dict"):
        feature_cfg.update(feature_cls="hook", return_dict=kind == "dict")
    model = build_model_with_cfg(
        _build,
        variant,
        pretrained=False,
        feature_cfg=feature_cfg,
        backbone=backbone,
        context=context,
        **kwargs,
    )
    if isinstance(model, XTModel):  # the stem's real name, whatever the region encoder
        model.pretrained_cfg = {**model.pretrained_cfg, "first_conv": model.first_conv_name()}
        model.default_cfg = model.pretrained_cfg
    return model


def _make_factory(name: str):
    def factory(pretrained: bool = False, **kwargs: Any) -> XTModel:
        return _create_xt(name, pretrained=pretrained, **kwargs)

    factory.__name__ = factory.__qualname__ = name
    factory.__module__ = __name__
    factory.__doc__ = f"xT model {name} (see :func:`xt_plugins.create_model`)."
    return factory


for _name in model_names():
    setattr(sys.modules[__name__], _name, register_model(_make_factory(_name)))
for _name in _RELEASE_ONLY_NAMES:  # released official xT weights only (see RELEASE_BACKBONES)
    setattr(sys.modules[__name__], _name, register_model(_make_factory(_name)))
