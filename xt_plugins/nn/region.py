"""Region encoder: any timm backbone with ``features_only``, one feature pyramid per region.

timm's feature extractors return NCHW for ConvNeXt and Hiera but NHWC for Swin-V2; this module
normalises every stage to NCHW at its boundary so nothing downstream has to care.

.. versionadded:: 0.1
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn

__all__ = ["RegionEncoder", "RegionWeightsError", "load_region_weights", "read_state_dict"]

_PREFIXES = ("module.", "model.", "backbone.", "region_encoder.backbone.", "encoder.")
_FLAT = re.compile(r"^([A-Za-z][A-Za-z0-9]*(?:_[A-Za-z][A-Za-z0-9]*)*)_(\d+)$")


class RegionWeightsError(RuntimeError):
    """Raised when a region-weights file does not fit the region encoder."""


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict safely: safetensors, or a torch file with ``weights_only=True``.

    Nested ``{"state_dict": ...}`` / ``{"model": ...}`` checkpoints are unwrapped.

    Args:
        path: ``.safetensors``, ``.pt``, ``.pth``, ``.bin`` or ``.ckpt`` file.

    Returns:
        The tensors by name.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        RegionWeightsError: if the file holds no tensors or cannot be read safely.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle-based payloads are refused on purpose
        raise RegionWeightsError(
            f"{path}: cannot be read with weights_only=True ({err}); save a plain state dict "
            "or a .safetensors file"
        ) from err
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise RegionWeightsError(f"{path}: expected a mapping of tensor names to tensors")
    return dict(obj)


def _strip_prefixes(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out = dict(state)
    changed = True
    while changed and out:
        changed = False
        for p in _PREFIXES:
            if all(k.startswith(p) for k in out):
                out = {k[len(p) :]: v for k, v in out.items()}
                changed = True
    return out


def _plain_name(feature_key: str) -> str:
    """Map a features_only key (``stages_0.x``) to the plain model's key (``stages.0.x``)."""
    first, _, rest = feature_key.partition(".")
    m = _FLAT.match(first)
    if m is None:
        return feature_key
    return f"{m.group(1)}.{m.group(2)}" + (f".{rest}" if rest else "")


def load_region_weights(backbone: nn.Module, path: str | Path) -> None:
    """Load a plain timm checkpoint (or a saved region encoder) into a features_only backbone.

    Classifier and final-norm weights that ``features_only`` prunes are ignored; a stem whose
    input channels differ (e.g. RGB weights for 2-band SAR) is adapted with timm's
    ``adapt_input_conv``.

    Args:
        backbone: the timm feature extractor.
        path: weights file (see :func:`read_state_dict`).

    Raises:
        RegionWeightsError: listing the missing keys, unexpected keys and shape mismatches.
    """
    from timm.models import adapt_input_conv

    ckpt = _strip_prefixes(read_state_dict(path))
    target = backbone.state_dict()
    loaded: dict[str, Tensor] = {}
    missing, mismatched, used = [], [], set()
    for key, ref in target.items():
        src_key = key if key in ckpt else _plain_name(key)
        if src_key not in ckpt:
            missing.append(key)
            continue
        used.add(src_key)
        value = ckpt[src_key]
        if value.shape != ref.shape:
            if value.ndim == 4 and ref.ndim == 4 and value.shape[0] == ref.shape[0]:
                value = adapt_input_conv(ref.shape[1], value)
            if value.shape != ref.shape:
                mismatched.append(
                    f"{key}: file {tuple(ckpt[src_key].shape)} != model {tuple(ref.shape)}"
                )
                continue
        loaded[key] = value
    pruned = re.compile(r"^(head|fc|classifier|norm|head_drop|pre_logits|global_pool)\b")
    unexpected = sorted(k for k in ckpt if k not in used and not pruned.match(k))
    if missing or unexpected or mismatched:
        lines = [f"{path}: region weights do not fit the region encoder"]
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape", mismatched),
        ):
            if keys:
                shown = ", ".join(keys[:12]) + (
                    f", ... ({len(keys)} in all)" if len(keys) > 12 else ""
                )
                lines.append(f"  {label} keys: {shown}")
        raise RegionWeightsError("\n".join(lines))
    backbone.load_state_dict(loaded, strict=True)


def _create_backbone(
    name: str,
    region_size: int,
    in_chans: int,
    pretrained: bool,
    out_indices: Sequence[int],
    kwargs: dict,
) -> nn.Module:
    kw = dict(
        features_only=True, pretrained=pretrained, in_chans=in_chans, out_indices=tuple(out_indices)
    )
    kw.update(kwargs)
    if "img_size" not in kwargs:
        try:  # transformers (Swin-V2, Hiera) need the region size; CNNs reject the argument
            return timm.create_model(name, img_size=region_size, **kw)
        except TypeError:
            pass
    return timm.create_model(name, **kw)


class RegionEncoder(nn.Module):
    """Encode each region alone with a timm backbone, returning a NCHW feature pyramid.

    Args:
        backbone: timm model name (``swinv2_tiny_window16_256``, ``convnext_tiny``,
            ``hiera_base_224``, ...); any model that supports ``features_only``.
        region_size: region side in pixels (passed as ``img_size`` where the model takes it).
        in_chans: input channels (3 for RGB slides, 2 for VV/VH SAR).
        pretrained: load the backbone's timm pretrained weights (downloads; off in tests).
        weights: local weights file for the backbone (safetensors or torch ``weights_only``).
        out_indices: backbone stages to return.
        **kwargs: passed to ``timm.create_model`` (e.g. ``embed_dim``, ``depths``).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        backbone: str,
        region_size: int = 256,
        in_chans: int = 3,
        pretrained: bool = False,
        weights: str | Path | None = None,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.backbone_name = backbone
        self.region_size = region_size
        self.in_chans = in_chans
        self.backbone = _create_backbone(
            backbone, region_size, in_chans, pretrained, out_indices, kwargs
        )
        self.channels_last = str(getattr(self.backbone, "output_fmt", "NCHW")).endswith("NHWC")
        self.channels: list[int] = list(self.backbone.feature_info.channels())
        self.reductions: list[int] = list(self.backbone.feature_info.reduction())
        if weights is not None:
            load_region_weights(self.backbone, weights)

    def forward(self, regions: Tensor) -> list[Tensor]:
        """Encode regions.

        Args:
            regions: (N, C, region, region).

        Returns:
            One (N, C_i, region / s_i, region / s_i) map per stage, NCHW.
        """
        feats = self.backbone(regions)
        if self.channels_last:
            feats = [f.permute(0, 3, 1, 2) for f in feats]
        return [f.contiguous() for f in feats]
