"""Scene outputs: detection tables in map coordinates and per-region probability GeoTIFFs.

.. versionadded:: 0.2
   Split out of ``xt_plugins.torchgeo.predict``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from xt_plugins.infer import stream_predict
from xt_plugins.io import GeoTiffWriter, points_to_geojson

from .checkpoints import xt_model
from .datamodules import SARScene

__all__ = ["detection_table", "stream_region_map", "write_detections"]


def detection_table(rows: list[dict[str, Any]], scene: SARScene) -> pd.DataFrame:
    """xView3-style detection table of detections in scene pixels, with map coordinates."""
    columns = ["scene_id", "detect_scene_row", "detect_scene_column", "detect_x", "detect_y",
               "score", "is_vessel", "is_fishing", "vessel_length_m", "vessel_prob",
               "fishing_prob"]  # fmt: skip
    if not rows:
        return pd.DataFrame(columns=columns)
    df = pd.DataFrame(rows)
    df["is_vessel"], df["is_fishing"] = df["is_vessel"] > 0.5, df["is_fishing"] > 0.5
    xs, ys = scene.pixel_to_map(df["row"].to_numpy(), df["col"].to_numpy())
    df["detect_x"], df["detect_y"] = xs, ys
    df["detect_scene_row"] = np.floor(df["row"]).astype(np.int64)
    df["detect_scene_column"] = np.floor(df["col"]).astype(np.int64)
    df["scene_id"] = scene.name
    df["vessel_length_m"] = np.where(df["is_vessel"], df["vessel_length_m"], np.nan)
    return df.sort_values("score", ascending=False)[columns].reset_index(drop=True)


def write_detections(df: pd.DataFrame, scene: SARScene, out_dir: Path) -> list[Path]:
    """``detections.csv`` and ``detections.geojson`` (points in the scene's CRS)."""
    csv = out_dir / "detections.csv"
    df.to_csv(csv, index=False)
    geojson = out_dir / "detections.geojson"
    props = [
        {k: v for k, v in rec.items() if k not in ("detect_x", "detect_y")}
        for rec in df.to_dict("records")
    ]
    points_to_geojson(df["detect_x"], df["detect_y"], props, path=geojson, crs=scene.crs)
    return [csv, geojson]


def stream_region_map(
    task: nn.Module, scene: SARScene, out_dir: Path, batch: int, progress: bool
) -> Path:
    """Stream a classification model region by region: per-region GeoTIFF and ``scene.csv``."""
    from affine import Affine

    model = xt_model(task)
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
