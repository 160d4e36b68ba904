"""Slide-level training glue for MONAI's ``SupervisedTrainer`` (monai.engines).

A batch is a list of slide items from :class:`~xt_plugins.monai.NestedRegionWSIDataset` in
``"slide"`` mode; :func:`prepare_slide_batch` splits it into the items and a label tensor, and
:class:`~xt_plugins.monai.SlideStreamingInferer` (the trainer's ``inferer``) computes each
slide's logits with :func:`xt_plugins.stream_forward`, so the stock ``SupervisedTrainer``
iteration (loss, backward, AMP, gradient accumulation, events) trains the region encoder end to
end at bounded memory. Over several processes, :class:`GradientAllReduce` averages gradients
after each backward (DDP would need the slide forward to run through its own ``forward``).

.. versionadded:: 0.1
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["GradientAllReduce", "prepare_slide_batch"]


def prepare_slide_batch(
    batchdata: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    device: str | torch.device | None = None,
    non_blocking: bool = False,
    **kwargs: Any,
) -> tuple[list[Mapping[str, Any]], Tensor]:
    """``prepare_batch`` for slide items: ``(items, labels)``, labels (B,) long on ``device``.

    Args:
        batchdata: a list of slide items (``collate_fn=slide_collate``) or one item.
        device: where the labels go.
        non_blocking: passed to ``Tensor.to``.
        **kwargs: ignored (MONAI passes ``to_kwargs``).

    Returns:
        The items (the inferer reads their slides lazily) and the stacked labels.

    Raises:
        KeyError: if an item has no ``"label"``.

    .. versionadded:: 0.1
    """
    items = [batchdata] if isinstance(batchdata, Mapping) else list(batchdata)
    missing = [it.get("path", "?") for it in items if "label" not in it]
    if missing:
        raise KeyError(f"slide items without a 'label' (needed for training): {missing}")
    labels = torch.stack([torch.as_tensor(it["label"]).reshape(()) for it in items]).long()
    return items, labels.to(device=device, non_blocking=non_blocking)


class GradientAllReduce:
    """Ignite handler: average gradients over all processes after each backward pass.

    Attach it to a ``SupervisedTrainer`` (``train_handlers``) when several processes train one
    model (``torchrun``); it also broadcasts rank 0's weights when the run starts, so every
    process begins from the same model. Without an initialised process group it does nothing.

    Args:
        network: the model being trained.

    .. versionadded:: 0.1
    """

    def __init__(self, network: torch.nn.Module) -> None:
        self.network = network

    def attach(self, engine: Any) -> None:
        """Register on ``engine`` (called by MONAI for ``train_handlers``)."""
        from ignite.engine import Events
        from monai.engines.utils import IterationEvents

        engine.add_event_handler(Events.STARTED, self.broadcast)
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self.all_reduce)

    @staticmethod
    def _world() -> int:
        import torch.distributed as dist

        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    def broadcast(self, engine: Any = None) -> None:
        """Copy rank 0's parameters and buffers to every process."""
        if self._world() == 1:
            return
        import torch.distributed as dist

        for tensor in list(self.network.parameters()) + list(self.network.buffers()):
            dist.broadcast(tensor.data, src=0)

    def all_reduce(self, engine: Any = None) -> None:
        """Average ``.grad`` of every trainable parameter (a missing grad counts as zeros)."""
        world = self._world()
        if world == 1:
            return
        import torch.distributed as dist

        grads = []
        for p in self.network.parameters():
            if p.requires_grad:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                grads.append(p.grad)
        works = [dist.all_reduce(g, async_op=True) for g in grads]
        for work in works:
            work.wait()
        for g in grads:
            g.div_(world)
