"""MONAI inferers over whole slides: streamed slide logits for training, files for inference.

- :class:`SlideStreamingInferer` gives slide logits *with gradients* at bounded memory
  (:func:`xt_plugins.stream_forward`: regions read lazily inside checkpointed chunks); it is the
  ``inferer`` of a MONAI ``SupervisedTrainer`` / ``SupervisedEvaluator`` over slide items.
- :class:`WholeSlideInferer` streams every tissue region of a slide through the model
  (:func:`xt_plugins.stream_predict`) and writes a region probability map (Zarr), a PNG heatmap
  over the slide thumbnail, a GeoJSON of positive regions in level-0 pixels (QuPath imports it)
  and a CSV row with the slide prediction; it resumes interrupted slides.

.. versionadded:: 0.1
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor

from ..io import SlideSource, boxes_to_geojson, save_heatmap_png
from ..nn.streaming import stream_forward, stream_predict
from ..nn.xt import XTModel
from .wsi import TissueMask, open_slide, slide_region_mask, tissue_mask

__all__ = [
    "CSV_FIELDS",
    "RegionNormalize",
    "SlidePrediction",
    "SlideStreamingInferer",
    "WholeSlideInferer",
]

logger = logging.getLogger(__name__)

#: Columns of the slide prediction CSV.
CSV_FIELDS = (
    "slide",
    "path",
    "status",
    "label",
    "prediction",
    "probability",
    "probabilities",
    "regions",
    "tissue_regions",
    "positive_regions",
    "seconds",
    "zarr",
    "heatmap",
    "geojson",
    "error",
)


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


# ---------------------------------------------------------------------------- inference
@dataclass
class SlidePrediction:
    """The outcome of one slide in :class:`WholeSlideInferer`.

    Attributes:
        slide: file name.
        path: slide path.
        status: ``"ok"`` or ``"error"``.
        label: the true label when the input had one.
        prediction: predicted class.
        probability: probability of the positive class.
        probabilities: probability of every class.
        logits: slide logits.
        regions: regions in the grid.
        tissue_regions: regions with tissue (the ones encoded).
        positive_regions: regions whose positive probability reaches the threshold.
        seconds: wall time for the slide.
        zarr: region probability map (``probs`` (num_classes, rows, cols), ``tissue``).
        heatmap: PNG heatmap over the thumbnail.
        geojson: GeoJSON of positive regions in level-0 pixels.
        error: the error message when the slide failed.
        resumed: True when finished outputs of an earlier run were reused.
    """

    slide: str
    path: str
    status: str = "ok"
    label: Any = None
    prediction: int | None = None
    probability: float | None = None
    probabilities: list[float] = field(default_factory=list)
    logits: list[float] = field(default_factory=list)
    regions: int = 0
    tissue_regions: int = 0
    positive_regions: int = 0
    seconds: float = 0.0
    zarr: str | None = None
    heatmap: str | None = None
    geojson: str | None = None
    error: str | None = None
    resumed: bool = False

    @property
    def ok(self) -> bool:
        """True when the slide was predicted."""
        return self.status == "ok"

    def csv_row(self) -> dict[str, Any]:
        """The row of this slide in the prediction CSV (:data:`CSV_FIELDS`)."""
        row = {k: v for k, v in asdict(self).items() if k in CSV_FIELDS}
        row["probabilities"] = " ".join(f"{p:.6g}" for p in self.probabilities)
        if self.probability is not None:
            row["probability"] = f"{self.probability:.6g}"
        row["seconds"] = f"{self.seconds:.3f}"
        return {k: ("" if row.get(k) is None else row[k]) for k in CSV_FIELDS}


def _probabilities(logits: Tensor) -> Tensor:
    return torch.sigmoid(logits) if logits.numel() == 1 else torch.softmax(logits, dim=-1)


def network_fingerprint(network: torch.nn.Module) -> str:
    """A short hash of a network's weights (resumed outputs must come from the same model).

    The hash is cached on the network until a weight changes in place (an optimizer step), so
    predicting many slides hashes the weights once.
    """
    tensors = network.state_dict()
    versions = tuple(t._version for t in tensors.values())
    cached = getattr(network, "_xt_fingerprint", None)
    if cached is not None and cached[0] == versions:
        return cached[1]
    digest = hashlib.sha1()
    for name, value in tensors.items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    fingerprint = digest.hexdigest()[:16]
    network._xt_fingerprint = (versions, fingerprint)
    return fingerprint


class WholeSlideInferer(Inferer):
    """Predict whole slides region by region and write heatmaps, GeoJSON and a prediction CSV.

    For each slide ``<stem>`` it writes into ``output_dir``:

    - ``<stem>.zarr``: ``probs`` (num_classes, rows, cols) region probabilities (NaN off
      tissue) and ``tissue`` (rows, cols) tissue fractions; attributes record the geometry
      (``region_size``, ``scale`` = level-0 px per pixel, ``mpp``) and the slide logits.
    - ``<stem>_heatmap.png``: the positive-class probability over the slide thumbnail.
    - ``<stem>.geojson``: positive regions as rectangles in level-0 pixels (QuPath
      annotations with class and probability).

    :meth:`predict_slides` adds one row per slide to a CSV and turns a failing slide into one
    error line naming it while the others go on. An interrupted slide resumes where it stopped;
    finished slides are skipped when the model and settings are unchanged.

    Args:
        output_dir: folder for the outputs (None: compute only, write nothing).
        mpp: microns per pixel the model works at.
        slide_mpp: level-0 mpp for slides that do not record it.
        min_tissue: a region is predicted when its tissue fraction is at least this.
        region_batch: regions encoded together.
        positive_class: the class shown in heatmaps and GeoJSON.
        threshold: positive-class probability from which a region goes into the GeoJSON.
        class_names: names of the classes (GeoJSON classification); default ``class_<k>``,
            with ``tumor`` for class 1 of two.
        transform: applied to each region batch (default: ImageNet normalisation).
        thumbnail_size: longest side of the thumbnail (tissue mask and heatmap background).
        tissue_kwargs: more options of :func:`~xt_plugins.monai.tissue_mask`.
        resume: continue interrupted slides and skip finished ones (False: recompute).
        keep_tokens: keep the per-region encoder tokens in the Zarr (large; they are only needed
            while a slide is in progress).
        progress: show progress bars (slides, and regions per slide).
        read_workers: reader threads per slide.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str] | None = None,
        *,
        mpp: float = 0.5,
        slide_mpp: float | None = None,
        min_tissue: float = 0.1,
        region_batch: int = 16,
        positive_class: int = 1,
        threshold: float = 0.5,
        class_names: Sequence[str] | None = None,
        transform: Callable[[Tensor], Tensor] | None = None,
        thumbnail_size: int = 2048,
        tissue_kwargs: Mapping[str, Any] | None = None,
        resume: bool = True,
        keep_tokens: bool = False,
        progress: bool = True,
        read_workers: int = 1,
    ) -> None:
        super().__init__()
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.mpp = mpp
        self.slide_mpp = slide_mpp
        self.min_tissue = min_tissue
        self.region_batch = region_batch
        self.positive_class = positive_class
        self.threshold = threshold
        self.class_names = None if class_names is None else list(class_names)
        self.transform = transform if transform is not None else RegionNormalize()
        self.thumbnail_size = thumbnail_size
        self.tissue_kwargs = dict(tissue_kwargs or {})
        self.resume = resume
        self.keep_tokens = keep_tokens
        self.progress = progress
        self.read_workers = read_workers

    # ------------------------------------------------------------------------ MONAI API
    def __call__(self, inputs: Any, network: Any, *args: Any, **kwargs: Any) -> Tensor:
        """Predict one slide or a list of slides; returns (B, num_classes) slide logits.

        ``inputs``: slide paths, :class:`~xt_plugins.io.SlideSource` objects or dict items with
        ``"image"``. Files are written as for :meth:`predict_slide`; errors are raised.
        """
        items = inputs if isinstance(inputs, list | tuple) else [inputs]
        preds = [self.predict_slide(item, network) for item in items]
        return torch.tensor([p.logits for p in preds], dtype=torch.float32)

    # ------------------------------------------------------------------------ many slides
    def predict_slides(
        self,
        slides: Sequence[Any],
        network: Any,
        *,
        csv_path: str | os.PathLike[str] | None = None,
        on_error: Callable[[SlidePrediction], None] | None = None,
    ) -> list[SlidePrediction]:
        """Predict each slide; a failing slide is reported and the others go on.

        Args:
            slides: paths, sources or dict items (``{"image": path, "label": ...}``).
            network: the model.
            csv_path: prediction CSV (default ``output_dir/predictions.csv``; rows are written
                as slides finish).
            on_error: called with each failed prediction (default: log one error line).

        Returns:
            One :class:`SlidePrediction` per slide, in input order.
        """
        from tqdm.auto import tqdm

        if csv_path is None and self.output_dir is not None:
            csv_path = self.output_dir / "predictions.csv"
        writer = None
        handle = None
        if csv_path is not None:
            Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
            handle = Path(csv_path).open("w", newline="")
            writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
            writer.writeheader()
        report = on_error or (lambda p: logger.error("%s", p.error))
        results = []
        try:
            for item in tqdm(slides, desc="slides", unit="slide", disable=not self.progress):
                try:
                    pred = self.predict_slide(item, network)
                except Exception as err:  # one slide's failure must not stop the others
                    pred = self._failure(item, err)
                    report(pred)
                results.append(pred)
                if writer is not None:
                    writer.writerow(pred.csv_row())
                    handle.flush()
        finally:
            if handle is not None:
                handle.close()
        return results

    @staticmethod
    def _failure(item: Any, err: Exception) -> SlidePrediction:
        path, label = _path_and_label(item)
        message = str(err) or type(err).__name__
        if path not in message:
            message = f"{path}: {message}"
        return SlidePrediction(
            Path(path).name, path, status="error", label=label, error=message.splitlines()[0]
        )

    # ------------------------------------------------------------------------ one slide
    def predict_slide(self, slide: Any, network: Any) -> SlidePrediction:
        """Predict one slide and write its outputs.

        Args:
            slide: a path, a :class:`~xt_plugins.io.SlideSource` (already at the model's
                resolution) or a dict item with ``"image"`` (and ``"label"``).
            network: the model (an XTNet / XTModel, or a wrapper of one).

        Returns:
            The :class:`SlidePrediction`.

        Raises:
            Exception: whatever fails, with the slide's path in the message (slide cannot be
                opened or read, no mpp, too small, no tissue, ...).
        """
        start = time.perf_counter()
        net = _unwrap(network)
        path, label = _path_and_label(slide)
        source = slide.get("image") if isinstance(slide, Mapping) else slide
        opened = not isinstance(source, SlideSource)
        if opened:
            source = open_slide(path, mpp=self.mpp, slide_mpp=self.slide_mpp)
        try:
            pred = SlidePrediction(Path(path).name, path, label=label)
            stem = Path(path).stem
            zpath = None if self.output_dir is None else self.output_dir / f"{stem}.zarr"
            settings = self._settings(net, source)
            group = self._open_previous(zpath, settings)
            tissue: TissueMask | None = None
            if group is not None and group.attrs["xt_plugins"].get("complete"):
                probs = np.asarray(group["probs"][:])  # (C, rows, cols)
                fractions = np.asarray(group["tissue"][:])  # (rows, cols)
                logits = torch.tensor(group.attrs["xt_plugins"]["logits"])
                pred.resumed = True
            else:
                probs, fractions, logits, tissue = self._predict(
                    net, source, zpath, group, settings
                )
            pos_map = self._summarize(pred, probs, logits)  # (rows, cols), NaN off tissue
            if self.output_dir is not None:
                heatmap = self.output_dir / f"{stem}_heatmap.png"
                geojson = self.output_dir / f"{stem}.geojson"
                if not (pred.resumed and heatmap.is_file() and geojson.is_file()):
                    if tissue is None:  # the thumbnail is the heatmap's background
                        tissue = tissue_mask(
                            source, max_side=self.thumbnail_size, **self.tissue_kwargs
                        )
                    self._write_heatmap(heatmap, pos_map, tissue, source, net.region_size)
                    num_classes = probs.shape[0]
                    name = self._class_names(num_classes)[self._positive(num_classes)]
                    self._write_geojson(geojson, pos_map, fractions, source, net.region_size, name)
                pred.zarr, pred.heatmap, pred.geojson = str(zpath), str(heatmap), str(geojson)
        finally:
            if opened:
                source.close()
        pred.seconds = time.perf_counter() - start
        return pred

    def _predict(
        self,
        net: XTModel,
        source: SlideSource,
        zpath: Path | None,
        group: Any,
        settings: dict[str, Any],
    ) -> tuple[np.ndarray, np.ndarray, Tensor, TissueMask]:
        """Stream the tissue regions: (probs (C, rows, cols), fractions, logits, tissue mask)."""
        region_mask, fractions, tissue = slide_region_mask(
            source,
            net.region_size,
            min_tissue=self.min_tissue,
            max_side=self.thumbnail_size,
            **self.tissue_kwargs,
        )
        if zpath is not None and group is None:
            import zarr

            zarr.open_group(str(zpath), mode="w").attrs["xt_plugins"] = {"settings": settings}
        result = stream_predict(
            net,
            source,
            region_batch=self.region_batch,
            out=zpath,
            progress=self.progress,
            resume=True,
            transform=self.transform,
            region_mask=region_mask,
            read_workers=self.read_workers,
        )
        grid = result.grid
        probs = result.region_outputs.T.reshape(-1, grid.rows, grid.cols).numpy()
        if zpath is not None:
            self._finish_store(zpath, settings, fractions, result.logits, source, net)
        return probs, fractions, result.logits, tissue

    def _summarize(self, pred: SlidePrediction, probs: np.ndarray, logits: Tensor) -> np.ndarray:
        """Fill the slide-level fields of ``pred``; return the positive-class region map."""
        slide_probs = _probabilities(logits.float())
        pred.logits = [float(v) for v in logits]
        pred.probabilities = [float(p) for p in slide_probs]
        if slide_probs.numel() == 1:
            pred.prediction = int(slide_probs[0] >= 0.5)
        else:
            pred.prediction = int(slide_probs.argmax())
        pos_map = probs[self._positive(probs.shape[0])]  # (rows, cols)
        pred.probability = float(slide_probs[self._positive(slide_probs.numel())])
        pred.regions = int(pos_map.size)
        pred.tissue_regions = int(np.isfinite(pos_map).sum())
        pred.positive_regions = int((np.nan_to_num(pos_map, nan=-1.0) >= self.threshold).sum())
        return pos_map

    def _positive(self, num_classes: int) -> int:
        """Index of the positive class (0 for a single sigmoid output)."""
        return min(self.positive_class, num_classes - 1)

    # ------------------------------------------------------------------------ helpers
    def _settings(self, net: XTModel, source: SlideSource) -> dict[str, Any]:
        """What the stored outputs depend on; a resumed run must match it."""
        return {
            "network": network_fingerprint(net),
            "mpp": source.mpp,
            "slide_mpp": source.slide_mpp,
            "level": source.level,
            "shape": list(source.shape),
            "region_size": net.region_size,
            "min_tissue": self.min_tissue,
            "transform": repr(self.transform),
            "tissue": {"max_side": self.thumbnail_size, **self.tissue_kwargs},
        }

    def _open_previous(self, zpath: Path | None, settings: dict[str, Any]) -> Any:
        """The Zarr group of an earlier run with the same settings, or None (stale ones removed)."""
        if zpath is None or not zpath.exists():
            return None
        import zarr

        if self.resume:
            try:
                group = zarr.open_group(str(zpath), mode="r+")
                stored = group.attrs.get("xt_plugins", {}).get("settings")
            except Exception:  # unreadable leftovers: start over
                group, stored = None, None
            if group is not None and _jsonable(stored) == _jsonable(settings):
                return group
            logger.warning("%s: made by another model or settings; recomputing", zpath)
        shutil.rmtree(zpath)
        return None

    def _finish_store(
        self,
        zpath: Path,
        settings: dict[str, Any],
        fractions: np.ndarray,
        logits: Tensor,
        source: SlideSource,
        net: XTModel,
    ) -> None:
        import zarr

        group = zarr.open_group(str(zpath), mode="r+")
        if "tissue" in group:
            del group["tissue"]
        group.create_array("tissue", data=fractions.astype(np.float32))
        if not self.keep_tokens:
            for name in ("tokens", "region_sum"):
                if name in group:
                    del group[name]
        group.attrs["xt_plugins"] = {
            "settings": settings,
            "complete": True,
            "logits": [float(v) for v in logits],
            "slide": source.path,
            "region_size": net.region_size,
            "scale": source.scale,
            "mpp": source.mpp,
            "level0_shape": list(source.level0_shape),
            "class_names": self._class_names(len(logits)),
        }

    def _class_names(self, n: int) -> list[str]:
        if self.class_names is not None:
            return self.class_names
        if n == 2:
            return ["normal", "tumor"]
        return [f"class_{k}" for k in range(n)]

    def _write_heatmap(
        self,
        path: Path,
        pos_map: np.ndarray,
        tissue: TissueMask,
        source: SlideSource,
        region_size: int,
    ) -> None:
        """Positive probability over the thumbnail (each thumbnail pixel looks up its region)."""
        th, tw = tissue.thumbnail.shape[:2]
        step = region_size * source.scale  # level-0 px per region
        ys = ((np.arange(th) + 0.5) * tissue.downsample[0] / step).astype(np.int64)
        xs = ((np.arange(tw) + 0.5) * tissue.downsample[1] / step).astype(np.int64)
        ys = ys.clip(0, pos_map.shape[0] - 1)
        xs = xs.clip(0, pos_map.shape[1] - 1)
        save_heatmap_png(pos_map[ys][:, xs], path, background=tissue.thumbnail)

    def _write_geojson(
        self,
        path: Path,
        pos_map: np.ndarray,
        fractions: np.ndarray,
        source: SlideSource,
        region_size: int,
        name: str,
    ) -> None:
        """Positive regions as level-0 rectangles (QuPath annotations of class ``name``)."""
        step = region_size * source.scale
        h0, w0 = source.level0_shape
        rows, cols = np.nonzero(np.nan_to_num(pos_map, nan=-1.0) >= self.threshold)
        boxes, props = [], []
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            x0, y0 = round(c * step, 2), round(r * step, 2)
            boxes.append(
                (x0, y0, round(min((c + 1) * step, w0), 2), round(min((r + 1) * step, h0), 2))
            )
            props.append(
                {
                    "class_name": name,
                    "probability": round(float(pos_map[r, c]), 4),
                    "tissue": round(float(fractions[r, c]), 4),
                    "row": r,
                    "col": c,
                }
            )
        boxes_to_geojson(boxes, props, path=path)


def _path_and_label(item: Any) -> tuple[str, Any]:
    if isinstance(item, Mapping):
        image, label = item.get("image"), item.get("label")
    else:
        image, label = item, None
    if isinstance(label, Tensor):
        label = label.item()
    path = image.path if isinstance(image, SlideSource) else os.fspath(image)
    return str(path), label


def _jsonable(value: Any) -> Any:
    """Round-trip through JSON so stored and fresh settings compare equal."""
    return json.loads(json.dumps(value))
