"""Whole-scene prediction from a trained checkpoint, streamed to GeoTIFF, CSV and GeoJSON.

Dense models (vessel detection, segmentation) run on windows of ``n x n`` regions that overlap
by ``overlap`` regions on each side; only each window's centre part is kept and written, tile
by tile, into a tiled GeoTIFF, so the scene's dense output is never held in memory. Detection
peaks are found on the whole window (so NMS sees across tile borders) and kept when they fall
in the window's centre part: each object is reported once. Classification models stream the
scene region by region through :func:`xt_plugins.stream_predict` and write a per-region
probability map.

Checkpoints are read with ``torch.load(weights_only=True)`` only: a file that needs
unpickling of arbitrary Python objects is refused with a clear error, never executed.

.. versionadded:: 0.1
"""

from __future__ import annotations

import inspect
import math
import os
import pickle
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from xt_plugins.io import GeoTiffWriter, ImageReadError, points_to_geojson
from xt_plugins.nn import XTModel

from .datamodules import SARScene, SARSceneError

__all__ = [
    "CheckpointError",
    "SceneResult",
    "load_checkpoint",
    "predict_scene",
    "predict_scenes",
    "task_from_checkpoint",
]

#: Errors that make predict-scene skip a scene (and go on with the others).
SCENE_ERRORS: tuple[type[BaseException], ...] = (
    SARSceneError,
    ImageReadError,
    OSError,
    ValueError,
)
DETECTION_BANDS = ("centre", "vessel", "fishing", "length_m")


class CheckpointError(ValueError):
    """A checkpoint cannot be loaded safely or does not describe a known task.

    .. versionadded:: 0.1
    """


@dataclass
class SceneResult:
    """What :func:`predict_scene` wrote for one scene.

    Attributes:
        scene: the scene folder.
        out_dir: its output folder.
        probabilities: the GeoTIFF probability map.
        detections: detection table (detection models; empty otherwise).
        files: every file written.
        seconds: wall time.
    """

    scene: Path
    out_dir: Path
    probabilities: Path
    detections: pd.DataFrame = field(default_factory=pd.DataFrame)
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0


# ---------------------------------------------------------------------------- checkpoints
def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``state_dict`` and ``hyper_parameters`` of a Lightning checkpoint, loaded safely.

    Args:
        path: ``.ckpt`` file written by Lightning (``torchgeo fit``).

    Returns:
        ``(state_dict, hyper_parameters)``.

    Raises:
        FileNotFoundError: if the file does not exist.
        CheckpointError: if ``torch.load(weights_only=True)`` refuses it, or it lacks a
            state dict or hyperparameters.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such checkpoint")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, EOFError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{p}: torch.load(weights_only=True) refused the file ({reason}). It is not a "
            "checkpoint of tensors and plain values; xt-plugins never unpickles other Python "
            "objects (an untrusted pickle can run code). Re-save it with only 'state_dict' "
            "and 'hyper_parameters'."
        ) from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{p}: not a Lightning checkpoint (no 'state_dict')")
    hparams = ckpt.get("hyper_parameters")
    if not isinstance(hparams, dict) or not hparams:
        raise CheckpointError(
            f"{p}: no 'hyper_parameters'; the task cannot be rebuilt (train with torchgeo "
            "fit, or save_hyperparameters() in the task)"
        )
    return ckpt["state_dict"], dict(hparams)


def _task_classes() -> dict[str, type]:
    from torchgeo.tasks import Classification, SemanticSegmentation

    from .tasks import XTClassification, XTSemanticSegmentation, XTVesselDetection

    classes: dict[str, type] = {}
    for cls in (
        XTVesselDetection,
        XTSemanticSegmentation,
        XTClassification,
        SemanticSegmentation,
        Classification,
    ):
        for name in (cls.__name__, f"{cls.__module__}.{cls.__name__}"):
            classes[name] = cls
    classes["xt_plugins.torchgeo.XTVesselDetection"] = XTVesselDetection
    classes["xt_plugins.torchgeo.XTClassification"] = XTClassification
    classes["xt_plugins.torchgeo.XTSemanticSegmentation"] = XTSemanticSegmentation
    classes["torchgeo.tasks.Classification"] = Classification
    classes["torchgeo.tasks.SemanticSegmentation"] = SemanticSegmentation
    classes["torchgeo.trainers.ClassificationTask"] = Classification
    classes["torchgeo.trainers.SemanticSegmentationTask"] = SemanticSegmentation
    return classes


def _guess_task_class(hparams: dict[str, Any]) -> str:
    if "_class_path" in hparams:
        return str(hparams["_class_path"])
    if "out_stride" in hparams and "decoder_channels" in hparams:
        return "XTVesselDetection"
    xt = "region_size" in hparams
    if "backbone" in hparams:
        return "XTSemanticSegmentation" if xt else "SemanticSegmentation"
    return "XTClassification" if xt else "Classification"


def task_from_checkpoint(path: str | os.PathLike[str], device: str | None = None) -> nn.Module:
    """Rebuild a task (one of xt-plugins' or TorchGeo's classification / segmentation tasks).

    Args:
        path: Lightning checkpoint.
        device: where to put the model (default: CUDA when available, else CPU).

    Returns:
        The task in eval mode with the checkpoint's weights.

    Raises:
        CheckpointError: for an unsafe or unknown checkpoint, or weights that do not fit.
    """
    state, hparams = load_checkpoint(path)
    name = _guess_task_class(hparams)
    classes = _task_classes()
    cls = classes.get(name)
    if cls is None:
        raise CheckpointError(
            f"{path}: task {name!r} is not supported by predict-scene; supported: "
            "XTVesselDetection, XTSemanticSegmentation, XTClassification and TorchGeo's "
            "Classification / SemanticSegmentation with xT models"
        )
    params = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in hparams.items() if k in params and k != "weights"}
    task = cls(**kwargs)
    missing, unexpected = task.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit {cls.__name__}({', '.join(sorted(kwargs))}): "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return task.to(device).eval()


def _xt_model(module: nn.Module) -> XTModel:
    for m in module.modules():
        if isinstance(m, XTModel):
            return m
    raise CheckpointError(f"{type(module).__name__} holds no xT model")


def task_kind(task: nn.Module) -> str:
    """``detection``, ``segmentation`` or ``classification``."""
    from torchgeo.tasks import SemanticSegmentation

    from .tasks import XTVesselDetection

    if isinstance(task, XTVesselDetection):
        return "detection"
    if isinstance(task, SemanticSegmentation):
        return "segmentation"
    return "classification"


# ---------------------------------------------------------------------------- dense pass
def _tiles(height: int, width: int, step: int) -> list[tuple[int, int]]:
    return [(y, x) for y in range(0, height, step) for x in range(0, width, step)]


def _batched(items: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _dense_outputs(task: nn.Module, kind: str, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Probabilities (B, C, h, w) and the raw outputs of a batch of windows.

    Detection channels: centre, vessel, fishing probabilities and length in metres.
    """
    out = task(x)
    if kind == "detection":
        probs = torch.cat(
            [
                out["heatmap"].sigmoid(),
                out["vessel"].sigmoid(),
                out["fishing"].sigmoid(),
                out["length"].clamp(-10, 10).exp(),
            ],
            dim=1,
        )
        return probs, out
    return (out.sigmoid() if out.shape[1] == 1 else out.softmax(dim=1)), out


def _stream_dense(
    task: nn.Module,
    kind: str,
    scene: SARScene,
    out_dir: Path,
    *,
    window_regions: int,
    overlap_regions: int,
    batch: int,
    threshold: float,
    progress: bool,
) -> tuple[Path, pd.DataFrame]:
    from affine import Affine
    from tqdm.auto import tqdm

    from .tasks import decode_detections

    region = _xt_model(task).region_size
    stride = int(task.hparams["out_stride"]) if kind == "detection" else 1
    window = window_regions * region
    margin = overlap_regions * region
    step = window - 2 * margin
    if window_regions < 1 or overlap_regions < 0 or step <= 0:
        raise ValueError(
            f"window of {window_regions} regions with {overlap_regions} regions of overlap on "
            "each side leaves no centre part: use window_regions > 2 * overlap_regions"
        )
    device = next(task.parameters()).device
    h_out, w_out = math.ceil(scene.height / stride), math.ceil(scene.width / stride)
    if kind == "detection":
        names = list(DETECTION_BANDS)
    else:
        names = [f"class_{i}" for i in range(int(task.hparams["num_classes"] or 1))]
    path = out_dir / "probabilities.tif"
    rows: list[dict[str, Any]] = []
    m, st = margin // stride, step // stride
    tiles = _tiles(scene.height, scene.width, step)
    bar = tqdm(total=len(tiles), unit="window", desc=scene.name, disable=not progress)
    with GeoTiffWriter(
        path,
        (len(names), h_out, w_out),
        "float32",
        crs=scene.crs,
        transform=scene.transform @ Affine.scale(stride),
        nodata=float("nan"),
        descriptions=names,
    ) as writer:
        for group in _batched(tiles, batch):
            reads = [scene.read_with_mask(y - margin, x - margin, window, window) for y, x in group]
            valid = torch.from_numpy(np.stack([v for _, v in reads]))[:, None].float()  # (B,1,H,W)
            cells = torch.nn.functional.max_pool2d(valid, stride) > 0 if stride > 1 else valid > 0
            if not valid.any():
                empty = np.full((len(names), st, st), np.nan, np.float32)
                for y, x in group:
                    writer.write(y // stride, x // stride, empty)
                bar.update(len(group))
                continue
            x_in = torch.from_numpy(np.stack([im for im, _ in reads])).to(device)
            with torch.inference_mode():
                probs, out = _dense_outputs(task, kind, x_in)
                probs = probs.float().cpu()  # (B, C, h, w)
                if kind == "detection":
                    dets = decode_detections(
                        out,
                        stride,
                        torch.ones(len(group)),
                        threshold,
                        int(task.hparams["nms_kernel"]),
                        valid.to(device),
                    )
            probs = torch.where(cells, probs, torch.full_like(probs, float("nan")))
            for b, (y, x) in enumerate(group):
                writer.write(y // stride, x // stride, probs[b, :, m : m + st, m : m + st].numpy())
                if kind == "detection":
                    rows.extend(_keep_centre(dets[b], y, x, margin, step, scene))
            bar.update(len(group))
    bar.close()
    return path, _detection_table(rows, scene)


def _keep_centre(
    det: dict[str, torch.Tensor], y: int, x: int, margin: int, step: int, scene: SARScene
) -> list[dict[str, Any]]:
    """Detections of one window that fall in its centre part, in scene pixels."""
    out = []
    r = det["row"].cpu().numpy() - margin  # relative to the tile origin
    c = det["col"].cpu().numpy() - margin
    keep = (r >= 0) & (r < step) & (c >= 0) & (c < step)
    rows, cols = r + y, c + x
    keep &= (rows < scene.height) & (cols < scene.width)
    for i in np.flatnonzero(keep):
        out.append(
            {
                "row": float(rows[i]),
                "col": float(cols[i]),
                "score": float(det["score"][i]),
                "vessel_prob": float(det["vessel_prob"][i]),
                "fishing_prob": float(det["fishing_prob"][i]),
                "is_vessel": bool(det["is_vessel"][i] > 0.5),
                "is_fishing": bool(det["is_fishing"][i] > 0.5),
                "vessel_length_m": float(det["vessel_length_m"][i]),
            }
        )
    return out


def _detection_table(rows: list[dict[str, Any]], scene: SARScene) -> pd.DataFrame:
    columns = [
        "scene_id",
        "detect_scene_row",
        "detect_scene_column",
        "detect_x",
        "detect_y",
        "score",
        "is_vessel",
        "is_fishing",
        "vessel_length_m",
        "vessel_prob",
        "fishing_prob",
    ]
    if not rows:
        return pd.DataFrame(columns=columns)
    df = pd.DataFrame(rows)
    xs, ys = scene.pixel_to_map(df["row"].to_numpy(), df["col"].to_numpy())
    df["detect_x"], df["detect_y"] = xs, ys
    df["detect_scene_row"] = np.floor(df["row"]).astype(np.int64)
    df["detect_scene_column"] = np.floor(df["col"]).astype(np.int64)
    df["scene_id"] = scene.name
    df["vessel_length_m"] = np.where(df["is_vessel"], df["vessel_length_m"], np.nan)
    return df.sort_values("score", ascending=False)[columns].reset_index(drop=True)


def _write_detections(df: pd.DataFrame, scene: SARScene, out_dir: Path) -> list[Path]:
    csv = out_dir / "detections.csv"
    df.to_csv(csv, index=False)
    geojson = out_dir / "detections.geojson"
    props = [
        {k: v for k, v in rec.items() if k not in ("detect_x", "detect_y")}
        for rec in df.to_dict("records")
    ]
    points_to_geojson(df["detect_x"], df["detect_y"], props, path=geojson, crs=scene.crs)
    return [csv, geojson]


# ---------------------------------------------------------------------------- classification
def _stream_classification(
    task: nn.Module, scene: SARScene, out_dir: Path, batch: int, progress: bool
) -> Path:
    from affine import Affine

    from xt_plugins import stream_predict

    model = _xt_model(task)
    result = stream_predict(model, scene, region_batch=batch, progress=progress)
    grid = result.grid
    probs = result.region_outputs.T.reshape(-1, grid.rows, grid.cols).numpy()  # (nc, rows, cols)
    path = out_dir / "probabilities.tif"
    with GeoTiffWriter(
        path,
        probs.shape,
        "float32",
        crs=scene.crs,
        transform=scene.transform @ Affine.scale(grid.region),
        nodata=float("nan"),
        tile=16 * max(1, min(32, math.ceil(max(probs.shape[1:]) / 16))),
        descriptions=[f"class_{i}" for i in range(probs.shape[0])],
    ) as writer:
        writer.write(0, 0, probs.astype(np.float32))
    logits = result.logits
    scene_probs = logits.sigmoid() if logits.numel() == 1 else logits.softmax(-1)
    (out_dir / "scene.csv").write_text(
        "scene_id,"
        + ",".join(f"class_{i}" for i in range(scene_probs.numel()))
        + "\n"
        + scene.name
        + ","
        + ",".join(f"{float(p):.6f}" for p in scene_probs)
        + "\n"
    )
    return path


# ---------------------------------------------------------------------------- API
def predict_scene(
    task: nn.Module,
    scene_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    bands: Sequence[str] | None = None,
    window_regions: int = 4,
    overlap_regions: int = 1,
    batch: int = 1,
    threshold: float | None = None,
    progress: bool = True,
) -> SceneResult:
    """Predict one scene and write its outputs into ``out_dir``.

    Writes ``probabilities.tif`` (scene CRS; transform = scene transform scaled by the
    output stride: 4 for detection bands centre / vessel / fishing / length_m, 1 for
    segmentation class probabilities, the region size for classification) and, for detection
    models, ``detections.csv`` and ``detections.geojson`` in map coordinates. Outputs are
    written into ``<out_dir>.partial`` and renamed when complete; a failed scene leaves
    nothing behind.

    Args:
        task: a task from :func:`task_from_checkpoint`.
        scene_dir: the scene folder.
        out_dir: output folder (replaced if it exists).
        bands: band names (default: VV, VH, then bathymetry, as many as the model's input
            channels).
        window_regions: window side in regions (dense models).
        overlap_regions: overlap per side in regions (dense models).
        batch: windows (dense) or regions (classification) per forward pass.
        threshold: centre probability of a detection (default: the task's score_threshold).
        progress: show a progress bar.

    Returns:
        A :class:`SceneResult`.
    """
    import time

    start = time.perf_counter()
    in_chans = _xt_model(task).in_chans
    bands = tuple(bands or ("VV", "VH", "bathymetry")[:in_chans])
    if len(bands) != in_chans:
        raise ValueError(f"the model takes {in_chans} input channels, got bands {list(bands)}")
    out = Path(out_dir)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        scene = SARScene(scene_dir, bands)
        kind = task_kind(task)
        detections = pd.DataFrame()
        extra: list[Path] = []
        if kind == "classification":
            _stream_classification(task, scene, partial, batch * 4, progress)
            extra.append(out / "scene.csv")
        else:
            thr = threshold if threshold is not None else task.hparams.get("score_threshold", 0.3)
            _, detections = _stream_dense(
                task,
                kind,
                scene,
                partial,
                window_regions=window_regions,
                overlap_regions=overlap_regions,
                batch=batch,
                threshold=float(thr),
                progress=progress,
            )
            if kind == "detection":
                _write_detections(detections, scene, partial)
                extra += [out / "detections.csv", out / "detections.geojson"]
        scene.close()
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return SceneResult(
        scene=Path(scene_dir),
        out_dir=out,
        probabilities=out / "probabilities.tif",
        detections=detections,
        files=[out / "probabilities.tif", *extra],
        seconds=time.perf_counter() - start,
    )


def predict_scenes(
    checkpoint: str | os.PathLike[str],
    scene_dirs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    device: str | None = None,
    report: Any = print,
    skip_errors: bool = True,
    **kwargs: Any,
) -> dict[Path, SceneResult | BaseException]:
    """Predict several scenes; a bad scene is reported and skipped, the others still run.

    Args:
        checkpoint: Lightning checkpoint of a supported task.
        scene_dirs: scene folders.
        out: output folder; scene ``S`` goes to ``out/S/``.
        device: where to run (default: CUDA when available).
        report: called with one line per scene (``print`` by default).
        skip_errors: report and skip a scene that fails with a data error (else raise).
        **kwargs: :func:`predict_scene` options.

    Returns:
        Scene folder -> its :class:`SceneResult`, or the error that skipped it.
    """
    task = task_from_checkpoint(checkpoint, device)
    results: dict[Path, SceneResult | BaseException] = {}
    for scene_dir in scene_dirs:
        scene_dir = Path(scene_dir)
        try:
            res = predict_scene(task, scene_dir, Path(out) / scene_dir.name, **kwargs)
        except SCENE_ERRORS as e:
            if not skip_errors:
                raise
            results[scene_dir] = e
            report(f"{scene_dir}: skipped: {e}")
            continue
        results[scene_dir] = res
        n = len(res.detections)
        report(
            f"{scene_dir}: wrote {res.out_dir} ({n} detection{'s' * (n != 1)}, {res.seconds:.1f} s)"
        )
    return results
