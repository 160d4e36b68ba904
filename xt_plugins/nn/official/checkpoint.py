"""Official xT checkpoints: safe reading, the key mapping onto OfficialXT, the fit check.

.. versionadded:: 0.2
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..region_weights import RegionWeightsError, read_state_dict
from .config import HF_HUB_ID, OfficialCheckpointError
from .model import OfficialXT

__all__ = ["checkpoint_filter_fn", "map_official_state_dict", "read_official_checkpoint"]

#: Buffers some timm versions saved with Swin-V2 weights; they are recomputed from the shapes.
_DERIVED_BUFFERS = re.compile(r"\.(relative_position_index|relative_coords_table|attn_mask)$")

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

    Reading is :func:`~xt_plugins.nn.region_weights.read_state_dict`'s (the one safe reader of
    this layer): nothing but tensors and plain values is unpickled, a pickle that needs code is
    refused without running it, and torch's pickle-protocol warning is not printed.

    Args:
        path: ``{"epoch", "state_dict", "optimizer_state_dict", "metrics"}`` file (or a plain
            state dict).

    Returns:
        The ``state_dict`` (keys as saved, ``module.`` included).

    Raises:
        FileNotFoundError: if the file does not exist.
        OfficialCheckpointError: one line naming the file, if it cannot be read with
            ``weights_only=True`` or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found; download it from {HF_HUB_ID}")
    try:
        state = read_state_dict(path)
    except RegionWeightsError as err:  # already one line naming the file
        raise OfficialCheckpointError(str(err)) from None
    if not state:
        raise OfficialCheckpointError(f"{path}: no 'state_dict' of tensors in this checkpoint")
    return state


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
