"""Mamba-1 mixer layer (parameter-compatible with ``mamba_ssm.Mamba``) and its residual block.

:class:`Mamba` takes and returns its ``(conv_state, ssm_state)``, so a sequence run in pieces
equals one pass; :class:`MambaBlock` is ``x + Mamba(LayerNorm(x))`` in one scan direction. The
scan itself is in :mod:`xt_plugins.nn.ops`; on CUDA with ``mamba_ssm`` importable its fused
kernels run, otherwise plain PyTorch.

.. versionadded:: 0.1
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import scan_kernels
from ..ops.selective_scan import ScanInputs, selective_scan

__all__ = ["Mamba", "MambaBlock", "MambaState"]

#: ``(conv_state (B, d_inner, d_conv - 1), ssm_state (B, d_inner, d_state))``
MambaState = tuple[Tensor, Tensor]


class Mamba(nn.Module):
    """Mamba-1 mixer, parameter-compatible with ``mamba_ssm.Mamba``, with a carried state.

    Same constructor, parameter names, shapes and initialisation as upstream (``in_proj``,
    ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``, ``out_proj``), so upstream weights
    load with ``load_state_dict``. Unlike upstream's training path, :meth:`forward` takes and
    returns the ``(conv_state, ssm_state)`` so a sequence can be run in pieces.

    Args:
        d_model: token dimension.
        d_state: SSM state size ``n``.
        d_conv: depthwise causal convolution width.
        expand: ``d_inner = expand * d_model``.
        dt_rank: rank of the step-size projection (``"auto"``: ``ceil(d_model / 16)``).
        dt_min: smallest initial step size.
        dt_max: largest initial step size.
        dt_init: ``"random"`` or ``"constant"`` initialisation of ``dt_proj.weight``.
        dt_scale: scale of the ``dt_proj.weight`` initialisation.
        dt_init_floor: floor of the initial step sizes.
        conv_bias: bias in ``conv1d``.
        bias: bias in ``in_proj`` and ``out_proj``.
        use_fast_path: use ``mamba_ssm``/``causal_conv1d`` kernels for CUDA inputs when present.
        layer_idx: kept for upstream compatibility.
        chunk_size: chunk length of the pure-PyTorch scan (:func:`~..ops.selective_scan`;
            None: sized to the work buffers, :func:`~..ops.auto_chunk_size`).
        device: parameter device (``"meta"`` works).
        dtype: parameter dtype (``A_log`` and ``D`` stay float32, as upstream).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        use_fast_path: bool = True,
        layer_idx: int | None = None,
        chunk_size: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        factory = {"device": device, "dtype": dtype}
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.use_fast_path = use_fast_path
        self.layer_idx = layer_idx
        self.chunk_size = chunk_size

        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias, **factory)
        self.conv1d = nn.Conv1d(
            self.d_inner,
            self.d_inner,
            kernel_size=d_conv,
            groups=self.d_inner,
            padding=d_conv - 1,
            bias=conv_bias,
            **factory,
        )
        self.activation = "silu"
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + d_state * 2, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)

        # dt projection: preserve variance at initialisation
        dt_init_std = self.dt_rank**-0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_init_std)
        elif dt_init == "random":
            nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        else:
            raise NotImplementedError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        # dt bias: softplus(bias) log-uniform in [dt_min, dt_max]
        dt = torch.exp(
            torch.rand(self.d_inner, **factory) * (math.log(dt_max) - math.log(dt_min))
            + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        inv_dt = dt + torch.log(-torch.expm1(-dt))  # inverse of softplus
        with torch.no_grad():
            self.dt_proj.bias.copy_(inv_dt)
        self.dt_proj.bias._no_reinit = True

        # S4D real initialisation, kept in float32
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device)
        self.A_log = nn.Parameter(torch.log(A).expand(self.d_inner, -1).contiguous())
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.D._no_weight_decay = True

        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    def _use_kernels(self, x: Tensor) -> bool:
        return self.use_fast_path and scan_kernels.HAS_MAMBA_SSM and x.is_cuda

    def _conv(self, x: Tensor, conv_state: Tensor | None) -> tuple[Tensor, Tensor]:
        """Causal depthwise conv + SiLU, time-major, continuing from ``conv_state``.

        Args:
            x: (B, L, d_inner) pre-conv activations.
            conv_state: (B, d_inner, d_conv - 1) the previous inputs (None: zeros).

        Returns:
            (B, L, d_inner) activations and the new conv state.
        """
        b, length, d = x.shape
        k = self.d_conv - 1
        fresh = conv_state is None
        if conv_state is None:
            conv_state = x.new_zeros(b, d, k)
        x_cat = torch.cat([conv_state.transpose(1, 2).to(x.dtype), x], dim=1)  # (B, k + L, d)
        new_state = x_cat[:, x_cat.shape[1] - k :].transpose(1, 2).contiguous()  # (B, d, k)
        weight = self.conv1d.weight[:, 0]  # (d_inner, d_conv)
        use_conv_kernel = fresh and scan_kernels.HAS_CAUSAL_CONV1D and self._use_kernels(x)
        if use_conv_kernel:  # pragma: no cover - CUDA only
            out = scan_kernels.causal_conv1d_fn(
                x=x.transpose(1, 2), weight=weight, bias=self.conv1d.bias, activation="silu"
            )
            return out.transpose(1, 2), new_state
        # out_t = bias + sum_i w_i x_{t - k + i}: d_conv shifted multiply-adds, no transposes
        out = x_cat[:, :length] * weight[:, 0]
        for i in range(1, self.d_conv):
            out = out.addcmul(x_cat[:, i : i + length], weight[:, i])
        if self.conv1d.bias is not None:
            out = out + self.conv1d.bias
        return self.act(out), new_state

    def forward(
        self, hidden_states: Tensor, state: MambaState | None = None
    ) -> tuple[Tensor, MambaState]:
        """Mix a sequence, continuing from ``state``.

        Args:
            hidden_states: (B, L, d_model).
            state: ``(conv_state (B, d_inner, d_conv - 1), ssm_state (B, d_inner, d_state))``
                from the previous piece of the sequence (None to start fresh).

        Returns:
            ``(out (B, L, d_model), new_state)``.
        """
        conv_state, ssm_state = state if state is not None else (None, None)
        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)  # (B, L, d_inner) each
        x, new_conv_state = self._conv(x, conv_state)
        x_dbl = self.x_proj(x)  # (B, L, dt_rank + 2 n)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # (B, L, d_inner); the bias goes to the scan
        A = -torch.exp(self.A_log.float())  # (d_inner, n)
        # the scan's (b, d, l) operands as views of time-major memory: no copies
        inputs = ScanInputs(
            u=x.transpose(1, 2),
            delta=dt.transpose(1, 2),
            A=A,
            B=B.transpose(1, 2),
            C=C.transpose(1, 2),
            D=self.D.float(),
            z=z.transpose(1, 2),
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
        )
        if self._use_kernels(x) and x.shape[1] > 0:  # pragma: no cover - CUDA only
            y, new_ssm_state = scan_kernels.kernel_scan_with_state(
                scan_kernels.cuda_selective_scan_fn,
                *(a.contiguous() if isinstance(a, Tensor) else a for a in inputs),
                initial_state=ssm_state,
            )
        else:
            y, new_ssm_state = selective_scan(
                *inputs,
                initial_state=ssm_state,
                return_last_state=True,
                chunk_size=self.chunk_size,
            )
        out = self.out_proj(y.transpose(1, 2))  # (B, L, d_model)
        return out, (new_conv_state, new_ssm_state)


class MambaBlock(nn.Module):
    """Pre-norm residual Mamba layer, ``x + Mamba(LayerNorm(x))``, in one scan direction.

    Args:
        dim: token dimension.
        reverse: scan right-to-left (the sequence is flipped around the mixer).
        **mamba_kwargs: passed to :class:`Mamba`.
    """

    def __init__(self, dim: int, reverse: bool = False, **mamba_kwargs: Any) -> None:
        super().__init__()
        self.reverse = reverse
        self.norm = nn.LayerNorm(dim)
        self.mixer = Mamba(dim, **mamba_kwargs)

    def mix(self, x: Tensor, state: MambaState | None = None) -> tuple[Tensor, MambaState]:
        """Residual update for a piece of sequence given in scan order.

        Args:
            x: (B, L, D) tokens, already in scan order (flipped by the caller if reverse).
            state: the mixer's state after the previous piece.

        Returns:
            ``(x + mixer(norm(x)) (B, L, D), new_state)``.
        """
        y, state = self.mixer(self.norm(x), state)
        return x + y, state

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, D) -> (B, N, D), one pass over the whole sequence in this block's direction."""
        if self.reverse:
            return self.mix(x.flip(1))[0].flip(1)
        return self.mix(x)[0]
