"""Region encoder: any timm backbone, one NCHW feature pyramid (strides 4, 8, 16, 32) per region.

Two families, one interface:

- hierarchical backbones (ConvNeXt, Swin-V2, Hiera, ResNet, ...) through timm's
  ``features_only``; timm returns NCHW for ConvNeXt and Hiera but NHWC for Swin-V2, and every
  stage is normalised to NCHW here so nothing downstream has to care;
- plain ViTs (DeiT, DINOv2, and the pathology foundation models UNI, Virchow2, H-optimus-0 and
  Prov-GigaPath's tile encoder, which timm loads by ``hf_hub:`` name): the last block's tokens
  (final norm applied, cls / register tokens dropped) are reshaped to a stride-16 map and a
  learnable :class:`~xt_plugins.nn.pyramid.SimpleFeaturePyramid` (ViTDet) builds the four levels.

Pretrained weights come through timm's own machinery: ``pretrained=True`` downloads them,
``pretrained_cfg_overlay=dict(file=PATH)`` reads a local copy offline, ``local-dir:FOLDER``
names a downloaded Hugging Face model folder, and timm adapts the RGB stem to other band counts
(``in_chans``). ``weights=PATH`` loads a local state dict with :func:`load_region_weights`.
The pretrained config's ``mean`` / ``std`` are exposed for the input transform.

.. versionadded:: 0.1
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .pyramid import PYRAMID_STRIDES, SimpleFeaturePyramid
from .region_weights import RegionWeightsError, load_region_weights, read_state_dict

__all__ = ["RegionEncoder", "RegionWeightsError", "load_region_weights", "read_state_dict"]

#: Region side when neither the caller nor a fixed-input-size pretrained config gives one.
DEFAULT_REGION_SIZE = 256
_VIT_STRIDE = PYRAMID_STRIDES[2]


@contextmanager
def _hub_errors(name: str) -> Iterator[None]:
    """Turn a failed Hugging Face Hub fetch into one line naming the model and the fixes."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
    )

    try:
        yield
    except (EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise RegionWeightsError(
            f"{name}: cannot fetch from the Hugging Face Hub ({type(err).__name__}: {reason}); "
            "gated models: accept the licence on the model page and set HF_TOKEN; offline: "
            "set HF_HUB_OFFLINE=1 with a cached copy, name a downloaded folder as "
            "local-dir:FOLDER, or pass pretrained_cfg_overlay=dict(file=PATH)"
        ) from err


def _check_overlay_file(overlay: dict[str, Any] | None) -> None:
    path = (overlay or {}).get("file")
    if path and not Path(path).is_file():
        raise FileNotFoundError(
            f"{path}: pretrained weights file not found (pretrained_cfg_overlay['file']); "
            "pass the path of a timm state dict (.safetensors or .pth)"
        )


def _probe(name: str, in_chans: int, kwargs: dict[str, Any]) -> nn.Module:
    """The plain model on the meta device: its class, ``feature_info`` and pretrained cfg."""
    feature_only_args = ("features_only", "out_indices", "feature_cls", "feature_cfg")
    kw = {k: v for k, v in kwargs.items() if k not in feature_only_args}
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, in_chans=in_chans, **kw)


def _is_plain_vit(model: nn.Module) -> bool:
    """One token map at one stride (ViT, DeiT, Eva, ...): the pyramid must be built here."""
    info = getattr(model, "feature_info", None)
    if not isinstance(info, list) or not info or not hasattr(model, "forward_intermediates"):
        return False
    return hasattr(model, "num_prefix_tokens") and len({i["reduction"] for i in info}) == 1


def _resolve_region_size(region_size: int | None, cfg: dict[str, Any]) -> int:
    if region_size is not None:
        return int(region_size)
    if cfg.get("fixed_input_size") and cfg.get("input_size"):
        return int(cfg["input_size"][-1])
    return DEFAULT_REGION_SIZE


def _band_stats(values: Sequence[float], in_chans: int) -> tuple[float, ...]:
    """Per-band statistics for ``in_chans`` bands, following timm's stem adaptation.

    ``adapt_input_conv`` sums the RGB filters for one band and cycles them (R, G, B, R, ...)
    for other counts, so a band gets the mean (one band) or the statistics of the RGB channel
    whose filter it inherited.
    """
    v = tuple(float(x) for x in values)
    if len(v) == in_chans:
        return v
    if in_chans == 1:
        return (sum(v) / len(v),)
    return tuple(v[i % len(v)] for i in range(in_chans))


def _first_conv_path(backbone: nn.Module, cfg: dict[str, Any]) -> str | None:
    """``pretrained_cfg['first_conv']`` as a module path inside the region encoder."""
    names = cfg.get("first_conv")
    if not names:
        return None
    name = names if isinstance(names, str) else names[0]
    parts = name.split(".")
    flat_name = "_".join(parts[:2]) + "".join(f".{p}" for p in parts[2:])  # FeatureListNet
    for candidate in (name, f"model.{name}", flat_name):
        try:
            module = backbone.get_submodule(candidate)
        except AttributeError:
            continue
        if isinstance(module, nn.Module) and hasattr(module, "weight"):
            return f"backbone.{candidate}"
    return None


def _create_features(
    name: str, region_size: int, in_chans: int, out_indices: Sequence[int], kwargs: dict
) -> nn.Module:
    kw = dict(features_only=True, in_chans=in_chans, out_indices=tuple(out_indices))
    kw.update(kwargs)
    if "img_size" not in kwargs:
        try:  # transformers (Swin-V2, Hiera) need the region size; CNNs reject the argument
            return timm.create_model(name, img_size=region_size, **kw)
        except TypeError:
            pass
    return timm.create_model(name, **kw)


def _create_vit(name: str, region_size: int, in_chans: int, kwargs: dict) -> nn.Module:
    """A plain ViT without its head, keeping every block and the final norm."""
    kw = dict(in_chans=in_chans, num_classes=0)
    kw.update(kwargs)
    kw.setdefault("img_size", region_size)
    model = timm.create_model(name, **kw)
    model.prune_intermediate_layers(1, prune_norm=False, prune_head=True)
    return model


class RegionEncoder(nn.Module):
    """Encode each region alone with a timm backbone, returning a NCHW feature pyramid.

    Args:
        backbone: timm model name (``swinv2_tiny_window16_256``, ``convnext_tiny``,
            ``hiera_base_224``, ``vit_base_patch16_224``, ...), optionally with a pretrained
            tag, or a timm source name: ``hf_hub:ORG/NAME`` (e.g. ``hf_hub:MahmoodLab/UNI``)
            or ``local-dir:FOLDER`` (a downloaded Hugging Face model folder).
        region_size: region side in pixels (passed as ``img_size`` where the model takes it).
            None: the pretrained config's input size for fixed-size models (ViTs, Swin,
            Hiera), else 256.
        in_chans: input channels (3 for RGB slides, 2 for VV/VH SAR); timm adapts a pretrained
            RGB stem to other counts.
        pretrained: load the backbone's pretrained weights through timm (downloads unless the
            pretrained config names a local ``file``).
        weights: local weights file for the backbone (safetensors or torch ``weights_only``),
            loaded after construction with :func:`load_region_weights`.
        out_indices: pyramid levels to return (0..3: strides 4, 8, 16, 32).
        pretrained_cfg: timm pretrained config (a tag such as ``"augreg_in21k"`` or a dict).
        pretrained_cfg_overlay: entries replacing those of the pretrained config, timm's
            convention: ``dict(file=PATH)`` loads a local copy offline; ``mean`` / ``std``
            override the normalisation.
        pyramid_dim: plain ViTs only: give every pyramid level this many channels with
            ViTDet's output convolutions (None: widths ``dim / 4, dim / 2, dim, dim`` and the
            pretrained features untouched at strides 16 and 32).
        **kwargs: passed to ``timm.create_model`` (e.g. ``embed_dim``, ``depths``,
            ``dynamic_img_size``, ``init_values``, ``cache_dir``).

    Attributes:
        channels: channels of each returned level.
        reductions: stride of each returned level.
        pretrained_cfg: the backbone's resolved timm pretrained config.
        mean: per-band input mean (from ``pretrained_cfg``, length ``in_chans``).
        std: per-band input std.
        first_conv: module path (inside this encoder) of the stem convolution, or None.
        is_vit: whether the backbone is a plain ViT with the simple feature pyramid.

    Raises:
        RegionWeightsError: a Hub download failed (one line with the HF_TOKEN / offline
            routes), or a ``weights`` file does not fit.
        FileNotFoundError: ``pretrained_cfg_overlay['file']`` or ``weights`` does not exist.
        ValueError: a ViT ``region_size`` that is not a multiple of 32; ``pyramid_dim`` for a
            hierarchical backbone.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
        Plain ViTs get a simple feature pyramid; ``pretrained_cfg`` / ``pretrained_cfg_overlay``,
        ``mean`` / ``std``; ``region_size`` defaults from the pretrained config.
    """

    def __init__(
        self,
        backbone: str,
        region_size: int | None = None,
        in_chans: int = 3,
        pretrained: bool = False,
        weights: str | Path | None = None,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        *,
        pretrained_cfg: str | dict[str, Any] | None = None,
        pretrained_cfg_overlay: dict[str, Any] | None = None,
        pyramid_dim: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        if pretrained_cfg is not None:
            kwargs["pretrained_cfg"] = pretrained_cfg
        if pretrained_cfg_overlay is not None:
            kwargs["pretrained_cfg_overlay"] = dict(pretrained_cfg_overlay)
        if pretrained:
            _check_overlay_file(pretrained_cfg_overlay)
        with _hub_errors(backbone):
            probe = _probe(backbone, in_chans, kwargs)
        cfg = dict(getattr(probe, "pretrained_cfg", None) or {})
        self.is_vit = _is_plain_vit(probe)
        del probe
        self.backbone_name = backbone
        self.region_size = _resolve_region_size(region_size, cfg)
        self.in_chans = in_chans
        self.out_indices = tuple(int(i) for i in out_indices)
        kwargs["pretrained"] = pretrained
        if self.is_vit:
            with _hub_errors(backbone):
                self._init_vit(backbone, pyramid_dim, kwargs)
        else:
            if pyramid_dim is not None:
                raise ValueError(
                    f"pyramid_dim applies to plain ViTs only; {backbone} is hierarchical"
                )
            with _hub_errors(backbone):
                self.backbone = _create_features(
                    backbone, self.region_size, in_chans, self.out_indices, kwargs
                )
            self.pyramid = None
            self.channels_last = str(getattr(self.backbone, "output_fmt", "NCHW")).endswith("NHWC")
            self.channels: list[int] = list(self.backbone.feature_info.channels())
            self.reductions: list[int] = list(self.backbone.feature_info.reduction())
        self.pretrained_cfg: dict[str, Any] = dict(
            getattr(self.backbone, "pretrained_cfg", None) or cfg
        )
        self.mean = _band_stats(self.pretrained_cfg.get("mean", (0.485, 0.456, 0.406)), in_chans)
        self.std = _band_stats(self.pretrained_cfg.get("std", (0.229, 0.224, 0.225)), in_chans)
        self.first_conv = _first_conv_path(self.backbone, self.pretrained_cfg)
        if weights is not None:
            filter_fn = None
            if self.is_vit:  # the family's own filter resamples pos_embed / patch_embed
                module = sys.modules[type(self.backbone).__module__]
                filter_fn = getattr(module, "checkpoint_filter_fn", None)
            load_region_weights(self.backbone, weights, filter_fn=filter_fn)

    def _init_vit(self, name: str, pyramid_dim: int | None, kwargs: dict[str, Any]) -> None:
        if self.region_size % PYRAMID_STRIDES[-1]:
            raise ValueError(
                f"{name}: region_size {self.region_size} must be a multiple of 32 for the "
                f"ViT feature pyramid (strides 4..32); pass e.g. region_size="
                f"{max(32, self.region_size // 32 * 32)}"
            )
        if any(not 0 <= i < len(PYRAMID_STRIDES) for i in self.out_indices):
            raise ValueError(f"{name}: out_indices must be in 0..3, got {self.out_indices}")
        self.backbone = _create_vit(name, self.region_size, self.in_chans, kwargs)
        self.channels_last = False
        dim = int(self.backbone.feature_info[-1]["num_chs"])
        #: the ViT's own token stride (16, or 14 for DINOv2-style models)
        self.patch_stride = int(self.backbone.feature_info[-1]["reduction"])
        self.pyramid = SimpleFeaturePyramid(dim, out_dim=pyramid_dim)
        self.channels = [self.pyramid.channels[i] for i in self.out_indices]
        self.reductions = [self.pyramid.strides[i] for i in self.out_indices]

    def vit_tokens(self, regions: Tensor) -> Tensor:
        """A plain ViT's last-block map on the stride-16 grid (prefix tokens dropped).

        Models with another patch size (14 for Virchow2, H-optimus-0, Prov-GigaPath) have
        their token map resampled (bilinear, antialiased) to ``region / 16`` per side so the
        pyramid's strides stay 4, 8, 16 and 32 for every model.

        Args:
            regions: (N, C, region, region).

        Returns:
            (N, dim, region / 16, region / 16).
        """
        (tokens,) = self.backbone.forward_intermediates(
            regions, indices=1, norm=True, output_fmt="NCHW", intermediates_only=True
        )
        side = (regions.shape[-2] // _VIT_STRIDE, regions.shape[-1] // _VIT_STRIDE)
        if tuple(tokens.shape[-2:]) != side:
            shrink = tokens.shape[-2] > side[0]
            tokens = F.interpolate(
                tokens, size=side, mode="bilinear", align_corners=False, antialias=shrink
            )
        return tokens

    def forward(self, regions: Tensor) -> list[Tensor]:
        """Encode regions.

        Args:
            regions: (N, C, region, region).

        Returns:
            One (N, C_i, region / s_i, region / s_i) map per returned level, NCHW.
        """
        if self.pyramid is not None:
            levels = self.pyramid(self.vit_tokens(regions))
            feats = [levels[i] for i in self.out_indices]
        else:
            feats = self.backbone(regions)
            if self.channels_last:
                feats = [f.permute(0, 3, 1, 2) for f in feats]
        return [f.contiguous() for f in feats]
