"""XTNet: an xT model with MONAI's network conventions, and safe checkpoints that rebuild it.

A checkpoint is ``{"model": state_dict, "config": XTNet kwargs}`` with plain types only, so it
loads with ``torch.load(..., weights_only=True)``; MONAI's ``CheckpointSaver`` writes exactly this
with ``save_dict={"model": net, "config": net.config_record}``. A ``.safetensors`` file carries
the config as JSON in its header metadata instead.

.. versionadded:: 0.1
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..io.checkpoints import CheckpointError, read_safetensors_json
from ..io.checkpoints import read_checkpoint as read_safely
from ..models import region_encoder_and_options
from ..nn.options import RUNTIME_OPTIONS
from ..nn.xt import XTModel

__all__ = ["XTNet", "CheckpointError", "load_checkpoint", "read_checkpoint", "save_checkpoint"]

#: Header key of the XTNet config in a safetensors checkpoint.
_SAFETENSORS_KEY = "xt_plugins.xtnet_config"


class XTNet(XTModel):
    """xT for MONAI: ``spatial_dims``, ``in_channels``, ``out_channels`` like every MONAI network.

    It *is* an :class:`~xt_plugins.nn.XTModel`, so :func:`xt_plugins.stream_predict` and
    :func:`xt_plugins.stream_forward` take it directly, and its state dict matches models made
    by :func:`xt_plugins.create_model`. Use it as a bundle's ``network_def``.

    Args:
        spatial_dims: must be 2 (whole-slide images and other 2D images).
        in_channels: input channels (3 for RGB slides).
        out_channels: classifier outputs (0: ``forward`` returns pooled features).
        region_encoder: timm backbone name or short name (``swinv2_tiny``, ``convnext_tiny``,
            ``hiera_base``), any model that supports ``features_only``.
        context: context encoder: ``none``, ``txl``, ``hyper`` or ``mamba``.
        region_size: region side in pixels.
        context_pool: pool each region to ``k x k`` context tokens (None: all last-stage tokens).
        pretrained_region: ``True`` loads timm's pretrained backbone weights (downloads); a path
            loads a local safetensors / torch (``weights_only``) file.
        **kwargs: the other xT options (``context_dim``, ``context_kwargs``, ``drop_rate``,
            ``global_pool``, ``region_chunk``, ``grad_ratio``, ``checkpoint_regions``,
            ``checkpoint_context``: see :data:`xt_plugins.nn.options.XT_OPTIONS`);
            everything else goes to ``timm.create_model`` for the backbone (e.g.
            ``embed_dim``, ``depths``). Built by
            :func:`xt_plugins.models.region_encoder_and_options`, as
            :func:`xt_plugins.create_model` is.

    Attributes:
        config: the constructor arguments (plain types), enough to rebuild the network.

    Raises:
        ValueError: if ``spatial_dims`` is not 2.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        out_channels: int = 2,
        region_encoder: str = "swinv2_tiny_window16_256",
        context: str = "mamba",
        region_size: int = 256,
        context_pool: int | None = None,
        pretrained_region: bool | str | None = None,
        **kwargs: Any,
    ) -> None:
        if spatial_dims != 2:
            raise ValueError(
                f"XTNet works on 2D images (spatial_dims=2); got spatial_dims={spatial_dims}. "
                "For 3D volumes use a MONAI 3D network."
            )
        config = dict(
            spatial_dims=2,
            in_channels=int(in_channels),
            out_channels=int(out_channels),
            region_encoder=region_encoder,
            context=context,
            region_size=int(region_size),
            context_pool=context_pool,
            pretrained_region=pretrained_region,
            **kwargs,
        )
        encoder, model_kwargs = region_encoder_and_options(
            region_encoder,
            region_size=region_size,
            in_chans=in_channels,
            pretrained_region=pretrained_region,
            context_pool=context_pool,
            **kwargs,
        )
        super().__init__(encoder, context, num_classes=out_channels, **model_kwargs)
        self.config: dict[str, Any] = _plain(config)

    @property
    def config_record(self) -> _ConfigRecord:
        """The config as a ``state_dict`` holder, for MONAI's ``CheckpointSaver`` ``save_dict``."""
        return _ConfigRecord(self)

    def __repr__(self) -> str:
        keys = ("region_encoder", "context", "region_size", "in_channels", "out_channels")
        return f"XTNet({', '.join(f'{k}={self.config[k]!r}' for k in keys)})"


class _ConfigRecord:
    """Lets ignite/MONAI checkpoint handlers save (and check on load) an XTNet's config."""

    def __init__(self, net: XTNet) -> None:
        self.net = net

    def state_dict(self) -> dict[str, Any]:
        return dict(self.net.config)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        _check_config(dict(state), self.net.config, "checkpoint")


def _plain(value: Any) -> Any:
    """Plain Python types only (tuples -> lists, paths -> str), so JSON and weights_only work."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(
        f"XTNet arguments must be plain values (numbers, strings, lists, dicts), got {value!r}"
    )


def _check_config(found: dict[str, Any], expected: dict[str, Any], where: str) -> None:
    """Raise a :class:`CheckpointError` listing the settings that differ."""
    # weights that are overwritten anyway, and memory / speed options that leave the weights
    # and the outputs as they are (inference may chunk differently from training)
    ignore = {"pretrained_region", *RUNTIME_OPTIONS}
    keys = (set(found) | set(expected)) - ignore
    diff = {
        k: (found.get(k), expected.get(k)) for k in sorted(keys) if found.get(k) != expected.get(k)
    }
    if diff:
        lines = ", ".join(f"{k}: {where} {a!r} != network {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(f"the {where} was saved for another network ({lines})")


def save_checkpoint(network: XTNet, path: str | os.PathLike[str]) -> Path:
    """Save weights and config: ``.safetensors`` (config in the header) or a torch file.

    Args:
        network: the network (a DistributedDataParallel wrapper is unwrapped).
        path: output file; ``.safetensors`` or anything else for ``torch.save``.

    Returns:
        The path written.

    .. versionadded:: 0.1
    """
    network = getattr(network, "module", network)
    if not isinstance(network, XTNet):
        raise TypeError(f"save_checkpoint needs an XTNet, got {type(network).__name__}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    if out.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(out), metadata={_SAFETENSORS_KEY: json.dumps(network.config)})
    else:
        torch.save({"model": state, "config": network.config}, out)
    return out


def read_checkpoint(
    path: str | os.PathLike[str],
) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """Read ``(state_dict, config or None)`` without unpickling (safetensors / weights_only).

    Accepts this module's checkpoints, MONAI ``CheckpointSaver`` files (``{"model": ...}``)
    and plain state dicts.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        CheckpointError: if the file cannot be read safely or holds no weights.
    """
    ckpt = read_safely(path)
    if ckpt.metadata:  # safetensors: the config is JSON in the header
        config = read_safetensors_json(ckpt, _SAFETENSORS_KEY)
    else:
        found = ckpt.get("config")
        config = dict(found) if isinstance(found, Mapping) else None
    state = ckpt.state_dict(("model", "state_dict", "network"))
    return {k.removeprefix("module."): v for k, v in state.items()}, config


def load_checkpoint(
    path: str | os.PathLike[str],
    network: XTNet | None = None,
    *,
    map_location: str | torch.device = "cpu",
    strict: bool = True,
) -> XTNet:
    """Load a checkpoint into ``network``, or rebuild the network from the checkpoint's config.

    Args:
        path: file written by :func:`save_checkpoint`, MONAI's ``CheckpointSaver`` or a plain
            state dict (``.pt`` / ``.pth`` / ``.safetensors``); never unpickled.
        network: the network to load into (its config must match the checkpoint's, when the
            checkpoint has one); None builds ``XTNet(**config)``.
        map_location: device of the returned network when it is built here.
        strict: as in ``load_state_dict``.

    Returns:
        The network with the weights loaded.

    Raises:
        CheckpointError: unreadable file, no config to build from, other network settings, or
            keys that do not fit.

    .. versionadded:: 0.1
    """
    state, config = read_checkpoint(path)
    if network is None:
        if config is None:
            raise CheckpointError(
                f"{path}: the checkpoint has no network config; build the network yourself "
                "(e.g. --model NAME) and pass it, or save with xt_plugins.monai.save_checkpoint"
            )
        config = {k: v for k, v in config.items() if k != "pretrained_region"}
        network = XTNet(**config).to(map_location)
    elif config is not None:
        try:
            _check_config(config, network.config, "checkpoint")
        except CheckpointError as err:
            raise CheckpointError(f"{path}: {err}") from None
    try:
        network.load_state_dict(state, strict=strict)
    except RuntimeError as err:  # torch lists every key on its own line: keep the first
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = "; ".join(lines[1:4]) + (" ..." if len(lines) > 4 else "")
        raise CheckpointError(f"{path}: weights do not fit the network: {detail}") from None
    return network
