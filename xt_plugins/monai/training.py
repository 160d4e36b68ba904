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

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.inferers import Inferer
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor

from ..infer import stream_forward
from ..nn.xt import XTModel

__all__ = ["GradientAllReduce", "RegionNormalize", "SlideStreamingInferer", "prepare_slide_batch"]


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


class RegionNormalize:
    """Scale uint8 pixels to [0, 1] and normalise per channel: (N, C, H, W) or (C, H, W).

    Args:
        mean: per-channel mean in [0, 1] units (ImageNet's by default, as timm backbones use).
        std: per-channel standard deviation in [0, 1] units.
        max_value: the pixel value that maps to 1.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        max_value: float = 255.0,
    ) -> None:
        if len(mean) != len(std):
            raise ValueError(f"mean and std differ in length: {len(mean)} != {len(std)}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.max_value = float(max_value)

    def __call__(self, x: Tensor) -> Tensor:
        """Normalise ``x``; channels are dimension -3."""
        mean = torch.tensor(self.mean, device=x.device)[:, None, None] * self.max_value
        std = torch.tensor(self.std, device=x.device)[:, None, None] * self.max_value
        return (x.float() - mean) / std

    def __repr__(self) -> str:
        return f"RegionNormalize(mean={self.mean}, std={self.std}, max_value={self.max_value})"


def _unwrap(network: Any) -> XTModel:
    """The XTModel inside a (Distributed)DataParallel wrapper."""
    net = getattr(network, "module", network)
    if not isinstance(net, XTModel):
        raise TypeError(f"expected an XTNet / XTModel, got {type(net).__name__}")
    return net


# ---------------------------------------------------------------------------- training
class SlideStreamingInferer(Inferer):
    """Slide logits with gradients for a batch of slide items, at bounded memory per slide.

    Each item is a dict with ``"image"`` (a lazy slide source, e.g. from
    :class:`~xt_plugins.monai.NestedRegionWSIDataset` in ``"slide"`` mode) and optionally
    ``"region_mask"`` ((rows, cols) bool: regions to use). The network's ``region_chunk``,
    ``checkpoint_regions`` and ``grad_ratio`` set the memory / speed trade-off; gradients reach
    the region encoder. Under ``no_grad`` (evaluation) the same call predicts.

    Args:
        transform: applied to each (n, C, r, r) batch of regions (default: ImageNet
            normalisation of uint8 pixels).

    .. versionadded:: 0.1
    """

    def __init__(self, transform: Callable[[Tensor], Tensor] | None = None) -> None:
        super().__init__()
        self.transform = transform if transform is not None else RegionNormalize()

    def __call__(self, inputs: Any, network: Any, *args: Any, **kwargs: Any) -> Tensor:
        """Return (B, num_classes) logits for ``inputs`` (an item or a list of items)."""
        items = inputs if isinstance(inputs, list | tuple) else [inputs]
        net = _unwrap(network)
        logits = []
        for item in items:
            item = item if isinstance(item, Mapping) else {"image": item}
            mask = item.get("region_mask")
            logits.append(
                stream_forward(net, item["image"], transform=self.transform, region_mask=mask)
            )
        return torch.stack(logits)
