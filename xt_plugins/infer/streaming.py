"""Bounded-memory inference and training over lazy image sources.

The region encoder runs on batches of regions read from the source (reading overlaps compute
through a background thread); only each region's context tokens and the sum of its last-stage
tokens are kept. The image-level output is then exact: pooling is linear, so

    pooled = sum_r w_r (S_r + sum_c n_rc ctx_rc) / sum_r w_r n_r

where S_r is the sum of region r's valid last-stage tokens, ctx_rc the context added to its
cell c (covering n_rc valid tokens) and w_r 0 for skipped regions. Peak memory does not grow
with the image area except through the context token sequence.

A source is any object with ``shape`` (C, H, W) and ``read(y, x, h, w) -> (C, h, w)`` that
pads outside the image with zeros; ``read_mask(y, x, h, w)`` (True on real pixels, or None)
is used when present (``read_with_mask`` reads both in one pass). :func:`xt_plugins.io.open_image`
makes one from arrays, zarr, GeoTIFFs and slides; a numpy array or tensor is opened the same
way, so NaN pixels are nodata.

.. versionadded:: 0.1
.. versionchanged:: 0.2
   Moved from ``xt_plugins.nn.streaming``; ``out`` is a run store keyed by the input's
   identity (:mod:`xt_plugins.infer.store`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..nn.tokenize import RegionGrid
from ..nn.xt import XTModel
from .identity import array_digest, describe, jsonable, source_identity, weights_digest
from .precision import check_precision, check_tta, run_model
from .store import DONE, TODO, RunStore, StoreError, _hint

__all__ = ["StreamResult", "stream_predict", "stream_forward", "cell_counts", "as_source"]

Transform = Callable[[Tensor], Tensor]


# ---------------------------------------------------------------------------- sources
def as_source(obj: Any) -> Any:
    """Return ``obj`` if it already reads windows, else open it as a lazy source.

    Arrays and tensors become an :class:`~xt_plugins.io.ArraySource`, so NaN pixels are
    nodata here exactly as through :func:`xt_plugins.io.open_image` (masked, and a region
    without valid pixels is skipped); paths and zarr arrays go through ``open_image``.
    """
    if hasattr(obj, "read") and hasattr(obj, "shape"):
        return obj
    from ..io import open_image

    if isinstance(obj, Tensor):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray) and obj.ndim == 4 and obj.shape[0] == 1:
        obj = obj[0]
    if isinstance(obj, np.ndarray) and obj.ndim != 3:
        raise ValueError(f"expected a (C, H, W) image, got shape {obj.shape}")
    return open_image(obj)


def _read_region(source: Any, grid: RegionGrid, index: int) -> tuple[np.ndarray, float]:
    """Read one region (C, r, r), zero outside the image and on nodata; and its valid fraction."""
    r = grid.region
    y, x = divmod(index, grid.cols)
    y, x = y * r, x * r
    if hasattr(source, "read_with_mask"):  # one pass over the file for pixels and mask
        data, mask = source.read_with_mask(y, x, r, r)
    else:
        data = source.read(y, x, r, r)
        mask = source.read_mask(y, x, r, r) if hasattr(source, "read_mask") else None
    data = np.asarray(data)
    if mask is None:
        h, w = min(r, grid.height - y), min(r, grid.width - x)
        return data, h * w / float(r * r)
    mask = np.asarray(mask, dtype=bool)
    if not mask.all():
        data = np.where(mask[None], data, np.zeros((), dtype=data.dtype))
    return data, float(mask.mean())


def _region_mask(region_mask: Any, grid: RegionGrid, name: str) -> Tensor:
    """(R,) bool of the regions allowed by ``region_mask`` (all when None)."""
    if region_mask is None:
        return torch.ones(grid.num_regions, dtype=torch.bool)
    allowed = torch.as_tensor(np.asarray(region_mask), dtype=torch.bool).reshape(-1)
    if allowed.numel() != grid.num_regions:
        raise ValueError(
            f"{name}: region_mask has {allowed.numel()} entries for the {grid.rows} x "
            f"{grid.cols} = {grid.num_regions} regions of the image"
        )
    if not bool(allowed.any()):
        raise ValueError(f"{name}: region_mask leaves no region to encode")
    return allowed


def _check_bands(model: XTModel, source: Any, name: str) -> None:
    channels = int(source.shape[0])
    if channels != model.in_chans:
        raise ValueError(
            f"{name}: the image has {channels} band(s) but the model takes {model.in_chans} "
            "input channels; select bands (e.g. open_image(path, bands=[...])) or use a model "
            f"built with in_chans={channels}"
        )


# ---------------------------------------------------------------------------- geometry
def cell_counts(model: XTModel, grid: RegionGrid) -> Tensor:
    """Valid last-stage tokens per context cell of each region (geometry only).

    Token (i, j) of a region gets the context of cell (floor(i k / h), floor(j k / h)) (nearest
    upsampling in :meth:`XTModel.fuse_context`); tokens beyond ``ceil(H / stride)`` are padding.

    Returns:
        (R, k * k) float tensor.
    """
    h = model.region_size // model.last_stride
    k = model.tokens_per_side
    crop_h = -(-grid.height // model.last_stride)
    crop_w = -(-grid.width // model.last_stride)
    coords = grid.coords()  # (R, 2)
    t = torch.arange(h)
    valid_rows = (coords[:, 0:1] * h + t[None]) < crop_h  # (R, h)
    valid_cols = (coords[:, 1:2] * h + t[None]) < crop_w  # (R, h)
    cell = (t * k) // h  # (h,) cell index of each token row / col
    onehot = torch.nn.functional.one_hot(cell, k).float()  # (h, k)
    rows = valid_rows.float() @ onehot  # (R, k) valid tokens per cell row
    cols = valid_cols.float() @ onehot  # (R, k)
    return (rows[:, :, None] * cols[:, None, :]).reshape(grid.num_regions, k * k)


def _summarize(model: XTModel, last: Tensor, counts_valid: Tensor) -> tuple[Tensor, Tensor]:
    """Context tokens (n, T, C) and valid-token sums (n, C) from last-stage maps (n, C, h, w)."""
    n, c, h, w = last.shape
    rows = counts_valid[:, 0]  # (n,) valid token rows per region
    cols = counts_valid[:, 1]
    t = torch.arange(h, device=last.device)
    mask = (t[None, :, None] < rows[:, None, None]) & (t[None, None, :] < cols[:, None, None])
    region_sum = (last * mask[:, None].to(last.dtype)).sum(dim=(-2, -1))  # (n, C)
    return model.pool_tokens(last), region_sum


def _valid_token_extent(model: XTModel, grid: RegionGrid, idx: Tensor) -> Tensor:
    """(n, 2) valid token rows / cols of the regions ``idx`` (last-stage crop)."""
    h = model.region_size // model.last_stride
    crop = torch.tensor([-(-grid.height // model.last_stride), -(-grid.width // model.last_stride)])
    coords = grid.coords()[idx.cpu()]
    return (crop[None] - coords * h).clamp(0, h).to(idx.device)


def _pool_image(
    model: XTModel, region_sum: Tensor, ctx: Tensor, counts: Tensor, weights: Tensor
) -> tuple[Tensor, Tensor]:
    """Image-level pooled features (C,) and per-region pooled features (R, C)."""
    per_region = region_sum + torch.einsum("rt,rtc->rc", counts.to(ctx.dtype), ctx)  # (R, C)
    n_valid = counts.sum(dim=1)  # (R,)
    total = (weights * n_valid).sum().clamp_min(1e-6)
    pooled = (weights[:, None] * per_region).sum(dim=0) / total
    return pooled, per_region / n_valid.clamp_min(1e-6)[:, None]


def _run_context(model: XTModel, tokens: Tensor, coords: Tensor, chunk_len: int) -> Tensor:
    """Context over (1, T, C) tokens; Mamba in chunks carrying its state."""
    if model.context_out is None:
        return torch.zeros_like(tokens)
    x = model.context_in(tokens)
    forward_chunked = getattr(model.context, "forward_chunked", None)
    if forward_chunked is not None and x.shape[1] > chunk_len:
        out = forward_chunked(x, coords, chunk_len)
    else:  # Transformer-XL walks its segments with memory; Hyper is O(N) in memory
        out, _ = model.context(x, coords)
    return model.context_out(out)


# ---------------------------------------------------------------------------- inference
@dataclass
class StreamResult:
    """What :func:`stream_predict` returns.

    Attributes:
        logits: image-level output (num_classes,), or pooled features (C,) without a classifier.
        region_map: the Zarr array of per-region outputs written at ``out`` (None without).
        grid: the region grid.
        processed: (R,) bool, regions that were encoded (False: skipped as invalid).
        region_outputs: (R, num_classes) per-region probabilities (NaN for skipped regions).
        seconds: wall time.
        regions_per_second: encoded regions per second (this run).
        resumed: True when regions of an earlier run of the same input were reused.
        extra: anything an adapter adds.
    """

    logits: Tensor
    region_map: Any
    grid: RegionGrid
    processed: Tensor
    region_outputs: Tensor
    seconds: float
    regions_per_second: float
    resumed: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _batches(
    source: Any,
    grid: RegionGrid,
    todo: list[int],
    batch: int,
    min_valid: float,
    workers: int,
    prefetch: int,
) -> Iterator[tuple[list[int], list[np.ndarray], list[int]]]:
    """Yield (kept indices, their crops, skipped indices) with reads running ahead in threads."""

    def read(chunk: list[int]):
        kept, crops, skipped = [], [], []
        for i in chunk:
            data, frac = _read_region(source, grid, i)
            if frac > min_valid or (min_valid == 0 and frac > 0):
                kept.append(i)
                crops.append(data)
            else:
                skipped.append(i)
        return kept, crops, skipped

    chunks = [todo[i : i + batch] for i in range(0, len(todo), batch)]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xt-read") as pool:
        pending: list[Future] = []
        for chunk in chunks:
            pending.append(pool.submit(read, chunk))
            if len(pending) > prefetch:
                yield pending.pop(0).result()
        for fut in pending:
            yield fut.result()


def stream_predict(
    model: XTModel,
    source: Any,
    *,
    region_batch: int = 16,
    out: str | Path | None = None,
    progress: bool = True,
    resume: bool = False,
    transform: Transform | None = None,
    region_mask: Tensor | np.ndarray | Callable[[], Any] | None = None,
    min_valid: float = 0.0,
    dense: bool = False,
    context_chunk: int = 4096,
    read_workers: int = 1,
    prefetch: int = 2,
    device: torch.device | str | None = None,
    settings: Mapping[str, Any] | None = None,
    keep_tokens: bool = True,
    precision: str = "32",
    tta: str | None = None,
) -> StreamResult:
    """Predict on an image of any size at bounded memory, region batch by region batch.

    With ``out`` the per-region results go to a run store (:class:`~xt_plugins.infer.RunStore`)
    whose identity is the input (path, size, mtime and sampled content, or every pixel of an
    in-memory array), the model's weights and the settings that change outputs; ``resume``
    continues it only when all of them match (otherwise it starts afresh with one warning
    line), and damaged parts of it are recomputed.

    Args:
        model: an :class:`XTModel` (eval mode is set for the call and restored).
        source: a lazy image (see module docs), a (C, H, W) array / tensor (NaN is nodata), or
            a path.
        region_batch: regions encoded together.
        out: a Zarr group path for the per-region results (``tokens``, ``region_sum``,
            ``state``) and the region map (``probs``, or ``dense``); resumable.
        progress: show a progress bar (regions/s).
        resume: continue a run at ``out`` made from the same input, weights and settings
            (its encoded regions are not redone); False with an existing ``out`` is an error.
        transform: applied to each (n, C, r, r) float batch (e.g. normalisation); its
            ``repr`` is part of the run's identity.
        region_mask: (R,) or (rows, cols) bool, False for regions never to read (e.g. no tissue);
            or a function returning it, called only when regions must be encoded (``settings``
            must then hold what the mask depends on: it is not hashed).
        min_valid: skip regions whose fraction of valid (non-nodata) pixels is not above this.
        dense: also write per-cell maps (k x k per region) instead of one value per region.
        context_chunk: tokens per chunk for Mamba's chunked context pass.
        read_workers: reader threads (1 keeps single-handle readers such as rasterio safe).
        prefetch: batches read ahead of compute.
        device: where the model runs (default: the model's device).
        settings: more plain values the outputs depend on (recorded in the run's identity).
        keep_tokens: keep the per-region tokens in ``out`` once finished (False drops them;
            a finished run is then answered from its stored maps).
        precision: ``"32"``, ``"bf16"`` or ``"16"`` (CUDA only): autocast of the region
            encoder (:mod:`xt_plugins.infer.precision`); tokens are stored and the context
            and heads run in float32. Part of the run's identity.
        tta: None or ``"flips"``: each region batch is encoded as it is and flipped
            left-right, up-down and both, the last-stage maps flipped back and averaged
            (4x the region-encoder compute). Part of the run's identity.

    Returns:
        A :class:`StreamResult`.

    Raises:
        ValueError: if the image's band count differs from the model's ``in_chans``, the
            region mask leaves no region, or ``precision`` / ``tta`` is unknown or float16 is
            asked for on a CPU (all before anything is written).
        xt_plugins.infer.StoreError: if ``out`` is not a usable run store.
    """
    from tqdm.auto import tqdm

    source = as_source(source)
    name = str(getattr(source, "path", None) or getattr(source, "name", "image"))
    start = time.perf_counter()
    _, height, width = (int(s) for s in source.shape)
    grid = model.grid_for(height, width)
    _check_bands(model, source, name)
    lazy_mask = callable(region_mask)  # computed only if regions must be encoded
    allowed = None if lazy_mask else _region_mask(region_mask, grid, name)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    precision, tta = check_precision(precision, device), check_tta(tta)
    settings = {**dict(settings or {}), "precision": precision, "tta": tta}
    k2 = model.tokens_per_side**2
    layout = dict(num_regions=grid.num_regions, tokens=k2, channels=model.num_features)
    store = None
    if out is not None:
        identity = run_identity(model, source, transform, allowed, min_valid, dense, settings)
        store = RunStore(out, identity, layout, resume=resume)
        result = _stored_result(model, grid, store, dense)
        if result is not None:
            result.seconds = time.perf_counter() - start
            return result
    else:
        store = RunStore(None, {}, layout)
    if allowed is None:
        allowed = _region_mask(region_mask(), grid, name)
    store.skip(np.flatnonzero(((~allowed) & (store.state == TODO)).numpy()))
    was_training = model.training
    model.eval()
    encoded = 0
    try:
        with torch.inference_mode():
            for _attempt in range(3):  # later passes re-encode regions found damaged
                todo = [int(i) for i in torch.nonzero(store.state == TODO).flatten()]
                bar = tqdm(
                    total=len(todo),
                    unit="region",
                    desc=getattr(source, "name", "image"),
                    disable=not progress or not todo,
                )
                try:
                    encoded += _encode(
                        model,
                        source,
                        grid,
                        store,
                        todo,
                        transform,
                        device,
                        region_batch,
                        min_valid,
                        read_workers,
                        prefetch,
                        bar,
                        precision,
                        tta,
                    )
                finally:
                    bar.close()
                tokens, region_sum, damaged = store.load()
                store.reset(damaged)
                if not bool((store.state == TODO).any()):
                    break
            else:
                raise StoreError(
                    f"{store.path}: regions stay damaged after re-encoding them (disk errors?); "
                    + _hint(store.path)
                )
            result = _finish(model, grid, store, tokens, region_sum, dense, context_chunk, device)
            store.finish({"logits": [float(v) for v in result.logits]}, keep_tokens=keep_tokens)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start
    result.seconds = seconds
    result.regions_per_second = encoded / seconds if seconds > 0 else 0.0
    result.resumed = store.resumed
    return result


def run_identity(
    model: XTModel,
    source: Any,
    transform: Transform | None,
    allowed: Tensor | None,
    min_valid: float,
    dense: bool,
    settings: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The identity of a streamed run: input, weights and every setting that changes outputs."""
    return {
        "source": source_identity(source),
        "weights": weights_digest(model),
        "settings": jsonable(
            {
                "region_size": model.region_size,
                "tokens_per_side": model.tokens_per_side,
                "context": model.context_name,
                "num_classes": model.num_classes,
                "transform": describe(transform),
                "region_mask": "from settings"
                if allowed is None
                else array_digest(allowed.numpy()),
                "min_valid": min_valid,
                "dense": dense,
                **dict(settings or {}),
            }
        ),
    }


def _encode(
    model: XTModel,
    source: Any,
    grid: RegionGrid,
    store: RunStore,
    todo: list[int],
    transform: Transform | None,
    device: torch.device,
    region_batch: int,
    min_valid: float,
    read_workers: int,
    prefetch: int,
    bar: Any,
    precision: str = "32",
    tta: str | None = None,
) -> int:
    """Encode the ``todo`` regions into the store; returns how many were encoded."""
    encoded = 0
    for kept, crops, skipped in _batches(
        source, grid, todo, region_batch, min_valid, read_workers, prefetch
    ):
        store.skip(np.asarray(skipped, dtype=np.int64))
        if kept:
            x = torch.from_numpy(np.stack(crops)).to(device=device, dtype=torch.float32)
            if transform is not None:
                x = transform(x)
            idx = torch.as_tensor(kept, device=device)
            last = run_model(lambda z: model.region_encoder(z)[-1], x, precision, tta).float()
            tokens, region_sum = _summarize(model, last, _valid_token_extent(model, grid, idx))
            store.put(np.asarray(kept), tokens.float().cpu(), region_sum.float().cpu())
            encoded += len(kept)
        bar.update(len(kept) + len(skipped))
    return encoded


def _stored_result(
    model: XTModel, grid: RegionGrid, store: RunStore, dense: bool
) -> StreamResult | None:
    """The result of a finished run that dropped its tokens (None: compute it here)."""
    run = store.run_attrs
    if not run.get("complete") or run.get("tokens_kept", True):
        return None
    maps = ("probs", "dense") if dense else ("probs",) if model.num_classes else ()
    result = store.finished(maps)
    if result is None:
        store.restart()
        return None
    processed = store.state == DONE
    nc = max(model.num_classes, 1)
    region_out = torch.full((grid.num_regions, nc), float("nan"))
    region_map = None
    if model.num_classes:
        region_map = store.group["dense" if dense else "probs"]
        probs = torch.from_numpy(np.asarray(store.group["probs"][:]))  # (C, rows, cols)
        region_out = probs.reshape(probs.shape[0], -1).T.contiguous()
    logits = torch.tensor(result["logits"], dtype=torch.float32)
    return StreamResult(logits, region_map, grid, processed, region_out, 0.0, 0.0, resumed=True)


def _finish(
    model: XTModel,
    grid: RegionGrid,
    store: RunStore,
    tokens: Tensor,
    region_sum: Tensor,
    dense: bool,
    context_chunk: int,
    device: torch.device,
) -> StreamResult:
    processed = store.state == DONE
    weights = processed.float()
    tokens = torch.nan_to_num(tokens, nan=0.0) if not bool(processed.all()) else tokens
    region_sum = torch.where(processed[:, None], region_sum, torch.zeros(()))
    counts = cell_counts(model, grid)  # (R, T)
    coords = grid.token_coords(model.tokens_per_side)  # (R*T, 2)
    flat = tokens.reshape(-1, tokens.shape[-1])  # (R*T, C), a view
    if bool(processed.all()):  # no copies of the token sequence: it is the big array here
        ctx = _run_context(model, flat[None].to(device), coords.to(device), context_chunk)[0]
        ctx = ctx.float().cpu()
    else:
        keep = processed.repeat_interleave(tokens.shape[1])
        ctx = torch.zeros_like(flat)
        if keep.any():
            seq = flat[keep][None].to(device)
            ctx[keep] = (
                _run_context(model, seq, coords[keep].to(device), context_chunk)[0].float().cpu()
            )
    ctx = ctx.reshape(tokens.shape)
    pooled, per_region = _pool_image(model, region_sum, ctx, counts, weights)
    logits = model.forward_head(pooled[None].to(device))[0].float().cpu()
    nc = model.num_classes
    region_out = torch.full((grid.num_regions, max(nc, 1)), float("nan"))
    region_map = None
    if nc > 0:
        probs = _probabilities(model.forward_head(per_region[processed].to(device)).float().cpu())
        region_out[processed] = probs
        if store.group is not None:
            region_map = store.write_map("probs", region_out.T.reshape(nc, grid.rows, grid.cols))
            if dense:
                cells = _probabilities(
                    model.forward_head((tokens + ctx).reshape(-1, tokens.shape[-1]).to(device))
                    .float()
                    .cpu()
                )
                cells = cells.reshape(
                    grid.num_regions, model.tokens_per_side, model.tokens_per_side, nc
                )
                cells[~processed] = float("nan")
                k = model.tokens_per_side
                dense_map = cells.reshape(grid.rows, grid.cols, k, k, nc).permute(4, 0, 2, 1, 3)
                region_map = store.write_map(
                    "dense", dense_map.reshape(nc, grid.rows * k, grid.cols * k)
                )
    return StreamResult(logits, region_map, grid, processed, region_out, 0.0, 0.0)


def _probabilities(logits: Tensor) -> Tensor:
    return torch.sigmoid(logits) if logits.shape[-1] == 1 else torch.softmax(logits, dim=-1)


# ---------------------------------------------------------------------------- training
def stream_forward(
    model: XTModel,
    source: Any,
    *,
    transform: Transform | None = None,
    region_mask: Tensor | np.ndarray | None = None,
) -> Tensor:
    """Image-level output with gradients, reading regions lazily (training at bounded memory).

    Regions are read from ``source`` inside the region encoder's chunks, so with
    ``model.checkpoint_regions`` only each region's context tokens and token sum stay alive
    between forward and backward (the chunk is re-read and recomputed in the backward pass).
    ``model.region_chunk`` and ``model.grad_ratio`` apply. Equals ``model(x)`` (same grads).

    Args:
        model: the model (its train / eval mode is respected).
        source: lazy image, (C, H, W) array / tensor, or a path.
        transform: applied to each (n, C, r, r) float batch.
        region_mask: (R,) bool, False for regions to skip.

    Returns:
        (num_classes,) logits (or (C,) pooled features without a classifier).
    """
    source = as_source(source)
    name = str(getattr(source, "path", None) or getattr(source, "name", "image"))
    _, height, width = (int(s) for s in source.shape)
    grid = model.grid_for(height, width)
    _check_bands(model, source, name)
    device = next(model.parameters()).device
    keep = torch.nonzero(_region_mask(region_mask, grid, name)).flatten()
    extent = _valid_token_extent(model, grid, torch.arange(grid.num_regions))

    def load(sub: Tensor) -> Tensor:
        regions = keep[sub.cpu()]
        crops = np.stack([_read_region(source, grid, int(i))[0] for i in regions])
        x = torch.from_numpy(crops).to(device=device, dtype=torch.float32)
        return transform(x) if transform is not None else x

    def summarize(sub: Tensor) -> tuple[Tensor, Tensor]:
        last = model.region_encoder(load(sub))[-1]
        return _summarize(model, last, extent[keep[sub.cpu()]].to(device))

    tokens, region_sum = model.map_regions(summarize, keep.numel())
    k2 = tokens.shape[1]
    coords = (
        grid.token_coords(model.tokens_per_side)
        .reshape(grid.num_regions, k2, 2)[keep]
        .reshape(-1, 2)
    )
    if model.context_out is None:
        ctx = torch.zeros_like(tokens)
    else:
        ctx = model.contextualize(
            tokens.reshape(1, -1, tokens.shape[-1]), coords.to(device)
        ).reshape(tokens.shape)
    counts = cell_counts(model, grid)[keep].to(device)
    pooled, _ = _pool_image(model, region_sum, ctx, counts, torch.ones(keep.numel(), device=device))
    return model.forward_head(pooled[None])[0]
