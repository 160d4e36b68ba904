"""Whole-scene prediction from a trained checkpoint, streamed to GeoTIFF, CSV and GeoJSON.

The TorchGeo side of the inference engine (:mod:`xt_plugins.infer`): tasks rebuilt from their
checkpoints (never unpickled), dense models through the engine's overlapping windows into a
GeoTIFF in the scene's CRS, classification models region by region, detections in map
coordinates, and many scenes through the engine's runner.

.. versionadded:: 0.1
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from xt_plugins.infer.dense import WindowPlan, predict_windows
from xt_plugins.infer.runner import PredictionTable, atomic_dir, expand_inputs, run_inputs
from xt_plugins.io import GeoTiffWriter, ImageReadError

from .checkpoints import CheckpointError, load_checkpoint, task_from_checkpoint, task_kind, xt_model
from .datamodules import SARScene, SARSceneError, find_scenes
from .scene_outputs import detection_table, stream_region_map, write_detections

__all__ = [
    "CheckpointError",
    "SCENE_FIELDS",
    "SceneResult",
    "load_checkpoint",
    "predict_scene",
    "predict_scenes",
    "task_from_checkpoint",
]

#: Errors that make predict-scene skip a scene (and go on with the others).
SCENE_ERRORS: tuple[type[BaseException], ...] = (SARSceneError, ImageReadError, OSError, ValueError)
DETECTION_BANDS = ("centre", "vessel", "fishing", "length_m")
#: Columns of ``predictions.csv`` of predict-scene (one row per scene, keyed by ``path``).
SCENE_FIELDS = ("scene", "path", "status", "out_dir", "detections", "seconds", "error")


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


# ---------------------------------------------------------------------------- dense pass
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
    """Dense outputs of a scene into ``probabilities.tif``; detections as a table."""
    from affine import Affine

    from .tasks import decode_detections

    stride = int(task.hparams["out_stride"]) if kind == "detection" else 1
    plan = WindowPlan(xt_model(task).region_size, window_regions, overlap_regions, stride)
    if kind == "detection":
        names = list(DETECTION_BANDS)
    else:
        names = [f"class_{i}" for i in range(int(task.hparams["num_classes"] or 1))]
    device = next(task.parameters()).device
    detect = None
    if kind == "detection":
        kernel = int(task.hparams["nms_kernel"])

        def detect(raw: Any, valid: torch.Tensor) -> list:
            ones = torch.ones(valid.shape[0])
            return decode_detections(raw, stride, ones, threshold, kernel, valid)

    path = out_dir / "probabilities.tif"
    with GeoTiffWriter(
        path,
        (len(names), *plan.output_shape(scene.height, scene.width)),
        "float32",
        crs=scene.crs,
        transform=scene.transform @ Affine.scale(stride),
        nodata=float("nan"),
        descriptions=names,
    ) as writer:
        rows = predict_windows(
            scene,
            plan,
            lambda x: _dense_outputs(task, kind, x),
            writer,
            channels=len(names),
            detect_fn=detect,
            batch=batch,
            device=device,
            progress=progress,
            name=scene.name,
        )
    return path, detection_table(rows, scene)


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

    Writes ``probabilities.tif`` (scene CRS; transform = scene transform scaled by the output
    stride: 4 for detection bands centre / vessel / fishing / length_m, 1 for segmentation,
    the region size for classification) and, for detection models, ``detections.csv`` and
    ``detections.geojson`` in map coordinates. A failed scene leaves nothing behind.

    Args:
        task: a task from :func:`task_from_checkpoint`.
        scene_dir: the scene folder.
        out_dir: output folder (replaced if it exists).
        bands: band names (default: VV, VH, bathymetry, as many as the model takes).
        window_regions: window side in regions (dense models).
        overlap_regions: overlap per side in regions (dense models).
        batch: windows (dense) or regions (classification) per forward pass.
        threshold: centre probability of a detection (default: the task's score_threshold).
        progress: show a progress bar.

    Returns:
        A :class:`SceneResult`.
    """
    start = time.perf_counter()
    in_chans = xt_model(task).in_chans
    bands = tuple(bands or ("VV", "VH", "bathymetry")[:in_chans])
    if len(bands) != in_chans:
        raise ValueError(f"the model takes {in_chans} input channels, got bands {list(bands)}")
    out = Path(out_dir)
    with atomic_dir(out) as partial:
        scene = SARScene(scene_dir, bands)
        kind = task_kind(task)
        detections = pd.DataFrame()
        names = ["probabilities.tif"]
        if kind == "classification":
            stream_region_map(task, scene, partial, batch * 4, progress)
            names.append("scene.csv")
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
                write_detections(detections, scene, partial)
                names += ["detections.csv", "detections.geojson"]
        scene.close()
    return SceneResult(
        scene=Path(scene_dir),
        out_dir=out,
        probabilities=out / "probabilities.tif",
        detections=detections,
        files=[out / n for n in names],
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
    """Predict several scenes; a bad scene is reported in one line and the others still run.

    Scene folders are expanded (a folder of scenes lists its scenes); each scene's outputs go
    to ``out/<name>/`` (:func:`xt_plugins.infer.runner.output_names`: same-named scenes of
    different folders never share one) and ``out/predictions.csv`` gets a row per scene.

    Args:
        checkpoint: Lightning checkpoint of a supported task.
        scene_dirs: scene folders, or folders of scene folders.
        out: output folder.
        device: where to run (default: CUDA when available).
        report: called with one line per scene (``print`` by default).
        skip_errors: report and skip a scene that fails with a data error (else raise).
        **kwargs: :func:`predict_scene` options.

    Returns:
        Scene folder -> its :class:`SceneResult`, or the error that skipped it.
    """
    from rasterio.env import Env

    task = task_from_checkpoint(checkpoint, device)
    out = Path(out)
    items = expand_inputs(
        scene_dirs, suffixes=(), is_input=_is_scene, list_folder=_list_scenes, what="scene"
    )
    table = PredictionTable(out / "predictions.csv", SCENE_FIELDS)
    results: dict[Path, SceneResult | BaseException] = {}

    def predict(item: Any) -> SceneResult:
        with Env(CPL_LOG="/dev/null"):  # GDAL's own error lines: the one-line report says it
            return predict_scene(task, item.path, out / item.name, **kwargs)

    def row(outcome: Any) -> dict[str, Any]:
        res = outcome.result
        return {
            "scene": outcome.item.path.name,
            "path": outcome.item.key,
            "status": "ok" if outcome.ok else "error",
            "out_dir": str(res.out_dir) if res else "",
            "detections": len(res.detections) if res else "",
            "seconds": f"{res.seconds:.3f}" if res else "",
            "error": outcome.error or "",
        }

    def tell(outcome: Any) -> None:
        item = outcome.item
        if outcome.ok:
            res, n = outcome.result, len(outcome.result.detections)
            results[item.path] = res
            s = "s" * (n != 1)
            report(f"{item.path}: wrote {res.out_dir} ({n} detection{s}, {res.seconds:.1f} s)")
        else:
            results[item.path] = RuntimeError(outcome.error)
            report(f"{item.path}: skipped: {outcome.error}")

    errors = SCENE_ERRORS if skip_errors else ()
    run_inputs(items, predict, row=row, table=table, report=tell, errors=errors)
    return results


def _is_scene(path: Path) -> bool:
    return any(path.glob("*.tif")) or any(path.glob("*.tiff"))


def _list_scenes(folder: Path) -> list[dict[str, Any]]:
    return [{"image": str(p)} for p in find_scenes(folder)]
