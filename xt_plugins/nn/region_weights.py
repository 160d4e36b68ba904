"""Region-encoder weight files: safe reading and loading into a timm backbone.

Checkpoints are read with safetensors or ``torch.load(weights_only=True)``, never by unpickling
arbitrary objects.

.. versionadded:: 0.1
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["RegionWeightsError", "load_region_weights", "read_state_dict"]

_PREFIXES = ("module.", "model.", "backbone.", "region_encoder.backbone.", "encoder.")
_FLAT = re.compile(r"^([A-Za-z][A-Za-z0-9]*(?:_[A-Za-z][A-Za-z0-9]*)*)_(\d+)$")
#: Classifier-side keys that a feature extractor (or a pruned ViT) does not have.
_PRUNED = re.compile(
    r"^(head|fc|classifier|norm|fc_norm|head_drop|pre_logits|global_pool|attn_pool)\b"
)


class RegionWeightsError(RuntimeError):
    """Raised when a region-weights file does not fit the region encoder."""


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict safely: safetensors, or a torch file with ``weights_only=True``.

    Nested ``{"state_dict": ...}`` / ``{"model": ...}`` checkpoints are unwrapped. A pickle that
    needs Python objects is refused without running it; torch's pickle-protocol warning is not
    printed.

    Args:
        path: ``.safetensors``, ``.pt``, ``.pth``, ``.bin`` or ``.ckpt`` file.

    Returns:
        The tensors by name.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        RegionWeightsError: one line naming the file, if it holds no tensors or cannot be read
            safely.
    """
    import warnings

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # truncated or foreign file
            reason = " ".join(str(err).split())[:200] or type(err).__name__
            raise RegionWeightsError(
                f"{path}: not a readable safetensors file ({reason}); copy or save it again"
            ) from None
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 5 ..." would reach stderr
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle-based payloads are refused on purpose, never run
        # torch explains a refusal in eight lines of advice: keep its reason only
        text = str(err)
        found = re.search(r"Unsupported (?:global: (?:GLOBAL )?[\w.]+|operand \S+)", text)
        found = found or re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        reason = found.group(found.lastindex or 0) if found else (lines[0] if lines else "")
        reason = re.sub(r"\x1b\[[0-9;]*m", "", reason)[:200] or type(err).__name__
        raise RegionWeightsError(
            f"{path}: cannot be read with weights_only=True ({reason}); save a plain state dict "
            "or a .safetensors file"
        ) from None
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


def plain_name(feature_key: str) -> str:
    """Map a features_only key (``stages_0.x``) to the plain model's key (``stages.0.x``)."""
    first, _, rest = feature_key.partition(".")
    m = _FLAT.match(first)
    if m is None:
        return feature_key
    return f"{m.group(1)}.{m.group(2)}" + (f".{rest}" if rest else "")


def load_region_weights(
    backbone: nn.Module,
    path: str | Path,
    filter_fn: Callable[[dict[str, Tensor], nn.Module], dict[str, Tensor]] | None = None,
) -> None:
    """Load a plain timm checkpoint (or a saved region encoder) into a region backbone.

    Classifier and final-norm weights that ``features_only`` prunes are ignored; a stem whose
    input channels differ (e.g. RGB weights for 2-band SAR) is adapted with timm's
    ``adapt_input_conv``.

    Args:
        backbone: the timm feature extractor (or a plain timm model, for ViTs).
        path: weights file (see :func:`read_state_dict`).
        filter_fn: the model family's timm checkpoint filter, applied before matching (for a
            plain ViT: resamples ``pos_embed`` to the region's token grid).

    Raises:
        RegionWeightsError: listing the missing keys, unexpected keys and shape mismatches.
    """
    from timm.models import adapt_input_conv

    ckpt = _strip_prefixes(read_state_dict(path))
    if filter_fn is not None:
        ckpt = filter_fn(ckpt, backbone)
    target = backbone.state_dict()
    loaded: dict[str, Tensor] = {}
    missing, mismatched, used = [], [], set()
    for key, ref in target.items():
        src_key = key if key in ckpt else plain_name(key)
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
    unexpected = sorted(k for k in ckpt if k not in used and not _PRUNED.match(k))
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape", mismatched),
        ):
            if keys:
                shown = ", ".join(keys[:12]) + (
                    f", ... ({len(keys)} in all)" if len(keys) > 12 else ""
                )
                parts.append(f"{label} keys: {shown}")
        raise RegionWeightsError(
            f"{path}: region weights do not fit the region encoder ({'; '.join(parts)}); "
            "pass a state dict of the same timm architecture and sizes as the region encoder"
        )
    backbone.load_state_dict(loaded, strict=True)
