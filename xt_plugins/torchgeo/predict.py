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
from rasterio._err import CPLE_BaseError
from rasterio.errors import RasterioError
from torch import nn

from xt_plugins.infer.dense import check_blend
from xt_plugins.infer.precision import check_precision, check_tta
from xt_plugins.infer.runner import (
    PredictionTable,
    atomic_dir,
    expand_inputs,
    native_noise_muted,
    run_inputs,
    unwritable_reason,
)
from xt_plugins.io import ImageReadError

from .checkpoints import CheckpointError, load_checkpoint, task_from_checkpoint, task_kind, xt_model
from .datamodules import SARScene, SARSceneError, find_scenes
from .scene_outputs import stream_dense, stream_region_map, warn_if_no_crs, write_detections

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
WRITE_ERRORS = (RasterioError, CPLE_BaseError, OSError)
SCENE_ERRORS: tuple[type[BaseException], ...] = (
    SARSceneError,
    ImageReadError,
    ValueError,
    *WRITE_ERRORS,
)
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
    blend: str | None = None,
    precision: str = "32",
    tta: str | None = None,
    uint8: bool = False,
) -> SceneResult:
    """Predict one scene and write its outputs into ``out_dir``.

    Writes ``probabilities.tif``, a Cloud-Optimized GeoTIFF (scene CRS; transform = scene
    transform scaled by the output stride: 4 for detection bands centre / vessel / fishing /
    length_m, 1 for segmentation, the region size for classification) and, for detection
    models, ``detections.csv`` and ``detections.geojson`` (QuPath detections) at pixel centres
    in map coordinates (:mod:`~xt_plugins.torchgeo.scene_outputs`; a scene without a CRS gets
    one warning line and pixel coordinates). A failed scene leaves nothing behind.

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
        blend: None (hard centre crops) or ``"hann"`` / ``"cosine"``: overlapping window
            outputs averaged with Hann-tapered weights (:mod:`xt_plugins.infer.dense`).
        precision: ``"32"``, ``"bf16"`` or ``"16"`` (CUDA) autocast
            (:mod:`xt_plugins.infer.precision`).
        tta: None or ``"flips"``: outputs averaged over the four flips of each window/region.
        uint8: store probabilities as uint8 (scale 1/254, nodata 255; a detector's length
            band then goes to ``length_m.tif``, float32).

    Returns:
        A :class:`SceneResult`.

    .. versionchanged:: 0.2
       COG output, ``blend``, ``precision``, ``tta``, ``uint8``; detections at pixel centres.
    """
    start = time.perf_counter()
    in_chans = xt_model(task).in_chans
    bands = tuple(bands or ("VV", "VH", "bathymetry")[:in_chans])
    if len(bands) != in_chans:
        raise ValueError(f"the model takes {in_chans} input channels, got bands {list(bands)}")
    device = next(task.parameters()).device
    modes = dict(precision=check_precision(precision, device), tta=check_tta(tta), quantize=uint8)
    blend = check_blend(blend)
    out = Path(out_dir)
    with atomic_dir(out) as partial:
        scene = SARScene(scene_dir, bands)
        warn_if_no_crs(scene)
        kind = task_kind(task)
        detections = pd.DataFrame()
        names = ["probabilities.tif"]
        if kind == "classification":
            stream_region_map(task, scene, partial, batch * 4, progress, **modes)
            names.append("scene.csv")
        else:
            thr = threshold if threshold is not None else task.hparams.get("score_threshold", 0.3)
            paths, detections = stream_dense(
                task, kind, scene, partial, window_regions=window_regions,
                overlap_regions=overlap_regions, batch=batch, threshold=float(thr),
                progress=progress, blend=blend, **modes,
            )  # fmt: skip
            names += [p.name for p in paths[1:]]
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
    check_precision(kwargs.get("precision", "32"), next(task.parameters()).device)  # once
    out = Path(out)
    items = expand_inputs(
        scene_dirs, suffixes=(), is_input=_is_scene, list_folder=_list_scenes, what="scene"
    )
    table = PredictionTable(out / "predictions.csv", SCENE_FIELDS)
    results: dict[Path, SceneResult | BaseException] = {}

    def predict(item: Any) -> SceneResult:
        try:  # GDAL's own error lines: the one-line report says it
            with Env(CPL_LOG="/dev/null"), native_noise_muted("rasterio"):
                return predict_scene(task, item.path, out / item.name, **kwargs)
        except WRITE_ERRORS as err:
            raise OSError(unwritable_reason(out) or str(err)) from err

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
