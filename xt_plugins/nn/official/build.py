"""Building official xT models: from a checkpoint and its config, and from timm's release tags.

.. versionadded:: 0.2
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import PretrainedCfg, build_model_with_cfg

from ..options import XT_OPTIONS
from .checkpoint import (
    _check_fit,
    checkpoint_filter_fn,
    map_official_state_dict,
    read_official_checkpoint,
)
from .config import (
    HF_HUB_ID,
    OFFICIAL_RELEASES,
    OfficialRelease,
    official_model_kwargs,
    parse_official_config,
)
from .model import OfficialXT

__all__ = [
    "create_official_xt",
    "load_official_xt",
    "official_release",
    "pretrained_cfgs_with_releases",
]

#: xT options of this project's XTModel that the official architecture has no use for.
_XT_ONLY_OPTIONS = tuple(k for k in XT_OPTIONS if k not in ("region_size", "region_chunk"))


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
