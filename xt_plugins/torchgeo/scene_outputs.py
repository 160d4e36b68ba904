"""Scene outputs: dense windows and region maps into COG GeoTIFFs, detections at pixel centres.

Detections are reported at the centre of the pixel they fall in: ``detect_scene_row`` /
``detect_scene_column`` are that pixel's index and ``detect_x`` / ``detect_y`` its centre in
the scene's CRS (the xView3 convention, and the one of the synthetic scenes' labels); the CSV's
``position`` column says ``pixel_centre`` and ``coordinates`` the CRS. A scene without a CRS
gets one warning line, ``coordinates`` ``pixel`` and ``detect_x`` / ``detect_y`` =
``column + 0.5`` / ``row + 0.5`` (pixel units, the GeoJSON without a ``crs`` member).

.. versionadded:: 0.2
   Split out of ``xt_plugins.torchgeo.predict``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from xt_plugins.infer import stream_predict
from xt_plugins.infer.dense import WindowPlan, predict_windows
from xt_plugins.infer.precision import flip_tta
from xt_plugins.io import GeoTiffWriter, points_to_geojson

from .checkpoints import xt_model
from .datamodules import SARScene

__all__ = [
    "DETECTION_BANDS",
    "detection_table",
    "stream_dense",
    "stream_region_map",
    "warn_if_no_crs",
    "write_detections",
]

logger = logging.getLogger("xt_plugins")

DETECTION_BANDS = ("centre", "vessel", "fishing", "length_m")
#: Columns of ``detections.csv`` (xView3's, then the position convention and coordinates).
DETECTION_COLUMNS = ("scene_id", "detect_scene_row", "detect_scene_column", "detect_x",
                     "detect_y", "score", "is_vessel", "is_fishing", "vessel_length_m",
                     "vessel_prob", "fishing_prob", "position", "coordinates")  # fmt: skip


def _crs_name(scene: SARScene) -> str:
    return "pixel" if scene.crs is None else scene.crs.to_string()


def warn_if_no_crs(scene: SARScene) -> None:
    """One warning line for a scene without a CRS (outputs are then in pixel coordinates)."""
    if scene.crs is None:
        logger.warning(
            "%s: the scene has no CRS; detections and GeoJSON are in pixel coordinates "
            "(x = column + 0.5, y = row + 0.5) and the GeoTIFFs carry no CRS",
            scene.path,
        )


def detection_table(rows: list[dict[str, Any]], scene: SARScene) -> pd.DataFrame:
    """xView3-style detection table: the pixel each detection falls in and its centre."""
    if not rows:
        return pd.DataFrame(columns=list(DETECTION_COLUMNS))
    df = pd.DataFrame(rows)
    df["is_vessel"], df["is_fishing"] = df["is_vessel"] > 0.5, df["is_fishing"] > 0.5
    df["detect_scene_row"] = np.floor(df["row"]).astype(np.int64)
    df["detect_scene_column"] = np.floor(df["col"]).astype(np.int64)
    r_c = df["detect_scene_row"].to_numpy() + 0.5  # pixel centres
    c_c = df["detect_scene_column"].to_numpy() + 0.5
    if scene.crs is None:
        df["detect_x"], df["detect_y"] = c_c, r_c
    else:
        df["detect_x"], df["detect_y"] = scene.pixel_to_map(r_c, c_c)  # continuous pixel coords
    df["scene_id"] = scene.name
    df["vessel_length_m"] = np.where(df["is_vessel"], df["vessel_length_m"], np.nan)
    df["position"], df["coordinates"] = "pixel_centre", _crs_name(scene)
    df = df.sort_values("score", ascending=False)
    return df[list(DETECTION_COLUMNS)].reset_index(drop=True)


def write_detections(df: pd.DataFrame, scene: SARScene, out_dir: Path) -> list[Path]:
    """``detections.csv`` and ``detections.geojson`` (QuPath detections in the scene's CRS)."""
    csv = out_dir / "detections.csv"
    df.to_csv(csv, index=False)
    geojson = out_dir / "detections.geojson"
    props = []
    for rec in df.to_dict("records"):
        prop = {k: v for k, v in rec.items() if k not in ("detect_x", "detect_y")}
        vessel, fishing = bool(rec["is_vessel"]), bool(rec["is_fishing"])
        prop["class_name"] = "fishing vessel" if fishing else "vessel" if vessel else "non-vessel"
        props.append(prop)
    meta = {"position": "pixel_centre", "coordinates": _crs_name(scene)}
    points_to_geojson(df["detect_x"], df["detect_y"], props, path=geojson, crs=scene.crs,
                      object_type="detection", metadata=meta)  # fmt: skip
    return [csv, geojson]


def _writer(path: Path, names: list[str], shape: tuple, scene: SARScene, scale: int,
            quantize: bool, **kw: Any) -> GeoTiffWriter:  # fmt: skip
    from affine import Affine

    return GeoTiffWriter(path, (len(names), *shape), "float32", crs=scene.crs,
                         transform=scene.transform @ Affine.scale(scale),
                         nodata=None if quantize else float("nan"), descriptions=names,
                         quantize=quantize, **kw)  # fmt: skip


class _SplitWriter:
    """Probability bands to one (quantized) GeoTIFF, the length band to a float32 one."""

    def __init__(self, probs: GeoTiffWriter, length: GeoTiffWriter):
        self.probs, self.length = probs, length

    def write(self, y: int, x: int, block: np.ndarray) -> None:
        self.probs.write(y, x, block[:3])
        self.length.write(y, x, block[3:])


def dense_outputs(task: nn.Module, kind: str, x: torch.Tensor, tta: str | None = None) -> tuple:
    """Probabilities (B, C, h, w) and the raw outputs of a batch of windows.

    Detection channels: centre, vessel, fishing probabilities and length in metres. With
    ``tta="flips"`` the task's raw outputs (logits) are averaged over the four flips first,
    so the map and the decoded detections agree.
    """
    out = flip_tta(task, x) if tta == "flips" else task(x)
    if kind == "detection":
        length = out["length"].float().clamp(-10, 10).exp()
        heads = [out[k].float().sigmoid() for k in ("heatmap", "vessel", "fishing")]
        return torch.cat([*heads, length], dim=1), out
    return (out.sigmoid() if out.shape[1] == 1 else out.softmax(dim=1)), out


def stream_dense(task: nn.Module, kind: str, scene: SARScene, out_dir: Path, *,
                 window_regions: int, overlap_regions: int, batch: int, threshold: float,
                 progress: bool, blend: str | None = None, precision: str = "32",
                 tta: str | None = None, quantize: bool = False) -> tuple[list, Any]:  # fmt: skip
    """Dense outputs of a scene into ``probabilities.tif`` (COG); detections as a table.

    With ``quantize`` the probability bands are uint8 (scale 1/254, nodata 255); a vessel
    detector's length band, not a probability, then goes to ``length_m.tif`` (float32).
    """
    from xt_plugins.nn.heads import decode_detections

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

    shape = plan.output_shape(scene.height, scene.width)
    paths = [out_dir / "probabilities.tif"]
    split = quantize and kind == "detection"
    writers = [_writer(paths[0], names[:3] if split else names, shape, scene, stride, quantize)]
    if split:
        paths.append(out_dir / "length_m.tif")
        writers.append(_writer(paths[1], names[3:], shape, scene, stride, False))
    try:
        sink = _SplitWriter(*writers) if split else writers[0]
        rows = predict_windows(scene, plan, lambda x: dense_outputs(task, kind, x, tta), sink,
                               channels=len(names), detect_fn=detect, batch=batch,
                               device=device, progress=progress, name=scene.name, blend=blend,
                               precision=precision)  # fmt: skip
    except BaseException:
        for w in writers:
            w.abort()
        raise
    for w in writers:
        w.close()
    return paths, detection_table(rows, scene)


def stream_region_map(task: nn.Module, scene: SARScene, out_dir: Path, batch: int,
                      progress: bool, *, precision: str = "32", tta: str | None = None,
                      quantize: bool = False) -> Path:  # fmt: skip
    """Stream a classification model region by region: per-region COG and ``scene.csv``."""
    model = xt_model(task)
    result = stream_predict(model, scene, region_batch=batch, progress=progress,
                            precision=precision, tta=tta)  # fmt: skip
    grid = result.grid
    probs = result.region_outputs.T.reshape(-1, grid.rows, grid.cols).numpy()  # (nc, rows, cols)
    path = out_dir / "probabilities.tif"
    names = [f"class_{i}" for i in range(probs.shape[0])]
    tile = 16 * max(1, min(32, math.ceil(max(probs.shape[1:]) / 16)))
    with _writer(path, names, probs.shape[1:], scene, grid.region, quantize, tile=tile) as w:
        w.write(0, 0, probs.astype(np.float32))
    logits = result.logits
    scene_probs = logits.sigmoid() if logits.numel() == 1 else logits.softmax(-1)
    header = "scene_id," + ",".join(f"class_{i}" for i in range(scene_probs.numel()))
    values = ",".join(f"{float(p):.6f}" for p in scene_probs)
    (out_dir / "scene.csv").write_text(f"{header}\n{scene.name},{values}\n")
    return path
