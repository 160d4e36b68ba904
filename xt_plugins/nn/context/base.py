"""The contract every context encoder follows, and the name -> class registry.

A context encoder reads the sequence of region tokens of one image (or a batch of images of
the same grid) and returns a sequence of the same shape. Positions never come from a
fixed-size buffer: they are computed from each token's (row, col) on the image's global token
grid, so any image size works.

.. versionadded:: 0.1
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

import torch
from torch import Tensor, nn
from torch.compiler import is_exporting
from torch.utils.checkpoint import checkpoint

__all__ = [
    "ContextEncoder",
    "CONTEXT_ENCODERS",
    "register_context",
    "build_context",
    "context_options",
    "check_context_options",
    "sincos_2d",
]

CONTEXT_ENCODERS: dict[str, type[ContextEncoder]] = {}


def register_context(name: str):
    """Class decorator that registers a context encoder under ``name``.

    Args:
        name: the name used in ``create_model(..., context=name)`` and in model names.

    Returns:
        The decorator.
    """

    def wrap(cls: type[ContextEncoder]) -> type[ContextEncoder]:
        if name in CONTEXT_ENCODERS:
            raise ValueError(f"context encoder {name!r} is already registered")
        cls.name = name
        CONTEXT_ENCODERS[name] = cls
        return cls

    return wrap


def build_context(name: str, dim: int, **kwargs: Any) -> ContextEncoder:
    """Build a registered context encoder.

    Args:
        name: registered name (``none``, ``txl``, ``hyper``, ``mamba``).
        dim: token dimension (channels of the region encoder's last stage).
        **kwargs: passed to the encoder's constructor; options of the other registered
            encoders are accepted and ignored.

    Returns:
        The context encoder.

    Raises:
        KeyError: if ``name`` is not registered; the message lists the known names.
        TypeError: on an option no registered encoder takes (:func:`check_context_options`).
    """
    if name not in CONTEXT_ENCODERS:
        raise KeyError(f"unknown context encoder {name!r}; known: {sorted(CONTEXT_ENCODERS)}")
    return CONTEXT_ENCODERS[name](dim, **kwargs)


def context_options(name: str) -> tuple[str, ...]:
    """The options a registered context encoder takes: its constructor's named parameters.

    Args:
        name: registered name.

    Returns:
        Sorted option names (without ``dim``).

    Raises:
        KeyError: if ``name`` is not registered.
    """
    if name not in CONTEXT_ENCODERS:
        raise KeyError(f"unknown context encoder {name!r}; known: {sorted(CONTEXT_ENCODERS)}")
    params = inspect.signature(CONTEXT_ENCODERS[name].__init__).parameters.values()
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(
        sorted(p.name for p in params if p.kind in named and p.name not in ("self", "dim"))
    )


def check_context_options(name: str, options: dict[str, Any]) -> None:
    """Raise on options that no registered context encoder takes.

    The project passes one option set to every encoder (``context_kwargs``), so an option of
    *another* registered encoder (``segment_len`` given to ``mamba``) is accepted and ignored;
    a name no encoder knows (a typo such as ``segment_length``) is an error.

    Args:
        name: the encoder the options are for (its own options are always accepted).
        options: the options it was given beyond its own named parameters.

    Raises:
        TypeError: naming the unknown option(s), the encoder's own options and the others'.
    """
    own = set(context_options(name)) if name in CONTEXT_ENCODERS else set()
    every = own.union(*(context_options(other) for other in CONTEXT_ENCODERS))
    unknown = sorted(set(options) - every)
    if not unknown:
        return
    hints = [
        f"{u!r} (did you mean {m[0]!r}?)"
        if (m := difflib.get_close_matches(u, every, 1))
        else repr(u)
        for u in unknown
    ]
    raise TypeError(
        f"unknown context option {', '.join(hints)} for context encoder {name!r} (fix the name "
        f"in context_kwargs); {name!r} takes "
        f"{sorted(own)}; options of the other registered encoders (accepted and ignored): "
        f"{sorted(every - own)}"
    )


def sincos_2d(coords: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """2-D sine-cosine embedding of (row, col) positions on the global token grid.

    Args:
        coords: (..., 2) float or integer positions (row, col); any range.
        dim: embedding size; a multiple of 4 uses all channels, others are zero-padded.
        temperature: frequency base.

    Returns:
        (..., dim) float tensor.
    """
    quarter = dim // 4
    out_shape = (*coords.shape[:-1], dim)
    if quarter == 0:
        return coords.new_zeros(out_shape, dtype=torch.float32)
    freqs = torch.arange(quarter, device=coords.device, dtype=torch.float32)
    freqs = 1.0 / (temperature ** (freqs / max(quarter, 1)))
    rows = coords[..., 0:1].float() * freqs  # (..., quarter)
    cols = coords[..., 1:2].float() * freqs
    emb = torch.cat([rows.sin(), rows.cos(), cols.sin(), cols.cos()], dim=-1)
    if emb.shape[-1] < dim:
        emb = torch.nn.functional.pad(emb, (0, dim - emb.shape[-1]))
    return emb


class ContextEncoder(nn.Module):
    """Base class: maps region tokens (B, N, D) with positions (N, 2) to (B, N, D).

    Subclasses implement :meth:`forward` and pass the options they do not take on to
    ``super().__init__(dim, **kwargs)``, which accepts those of the other registered encoders
    (the project passes one option set to every encoder) and raises a ``TypeError`` on any
    other name. ``state`` is encoder-specific and lets streaming
    code run the sequence in pieces: Transformer-XL returns its per-layer memory, Mamba its
    scan state; the stateless encoders return ``None``.

    Attributes:
        name: the registry name, set by :func:`register_context`.
        dim: token dimension.
        grad_checkpointing: recompute each layer's activations in the backward pass (only the
            layer inputs stay alive between forward and backward; set by
            ``XTModel(checkpoint_context=True)``).
    """

    name: str = "base"
    grad_checkpointing: bool = False

    def __init__(self, dim: int, **other_options: Any) -> None:
        """Set ``dim`` and check the options the subclass did not take itself.

        Args:
            dim: token dimension.
            **other_options: options of other registered encoders (ignored); anything else
                raises a ``TypeError`` (:func:`check_context_options`).
        """
        super().__init__()
        check_context_options(type(self).name, other_options)
        self.dim = dim

    def forward(
        self, tokens: Tensor, coords: Tensor, state: Any = None
    ) -> tuple[Tensor, Any]:  # pragma: no cover - interface
        """Integrate context over a token sequence.

        Args:
            tokens: (B, N, D) region tokens in scan order.
            coords: (N, 2) (row, col) of each token on the image's global token grid.
            state: encoder-specific carried state (None to start fresh).

        Returns:
            ``(out, state)``: (B, N, D) tokens and the state after the last token.
        """
        raise NotImplementedError

    def run_layer(self, layer: nn.Module, *args: Any) -> Any:
        """Run ``layer(*args)``, checkpointed when :attr:`grad_checkpointing` is on.

        Checkpointing applies only while autograd records; the RNG state is restored for the
        recomputation. ``torch.compile`` traces the checkpoint; ``torch.export``, which cannot,
        runs the layer plainly (same result, an exported graph is not trained through).
        """
        if self.grad_checkpointing and torch.is_grad_enabled() and not is_exporting():
            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)

    @staticmethod
    def _check(tokens: Tensor, coords: Tensor) -> None:
        if tokens.ndim != 3:
            raise ValueError(f"tokens must be (B, N, D), got shape {tuple(tokens.shape)}")
        if coords.shape != (tokens.shape[1], 2):
            raise ValueError(
                f"coords must be (N, 2) with N={tokens.shape[1]}, got {tuple(coords.shape)}"
            )


def trunc_normal_init(module: nn.Module, std: float = 0.02) -> None:
    """Initialise Linear layers with a truncated normal and zero bias (ViT style)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def identity_init(linear: nn.Linear) -> None:
    """Start a square Linear as the identity with zero bias.

    The context encoders add ``Linear(sincos_2d(row, col))`` to the region tokens. Initialised
    like every other Linear (std 0.02) the positions start about 20x weaker than the tokens and
    the encoder sits on a plateau for hundreds of steps before it uses where regions lie
    (measured on ``benchmarks/context_task.py``); the identity starts them at unit scale.
    """
    with torch.no_grad():
        nn.init.eye_(linear.weight)
        if linear.bias is not None:
            nn.init.zeros_(linear.bias)


def num_heads_for(dim: int, head_dim: int = 32) -> int:
    """Largest head count <= dim / head_dim that divides ``dim`` (at least 1)."""
    heads = max(1, dim // head_dim)
    while dim % heads:
        heads -= 1
    return heads
