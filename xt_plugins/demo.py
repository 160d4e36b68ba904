"""``xt-plugins demo``: the whole product on built-in synthetic data, end to end.

Stages (each a subprocess, so its peak memory is its own):

1. generate training slides and one large whole slide (about 40,000 x 30,000 px at 0.5 mpp);
2. fine-tune a small xT model through the shipped MONAI bundle (``monai.bundle run``);
3. whole-slide inference with the bundle's ``inference.yaml``: Zarr region map, heatmap PNG,
   QuPath GeoJSON, slide prediction CSV;
4. generate SAR training scenes and one large scene (about 12,000 x 10,000 px);
5. fine-tune a small xT vessel detector with ``torchgeo fit`` and the shipped config;
6. whole-scene inference with ``xt-plugins predict-scene``: GeoTIFF probability map, CSV and
   GeoJSON detections, and a heatmap PNG over the scene.

Everything lands in ``demo_out/`` with ``summary.json`` (per stage: seconds, regions/s, peak
memory). ``--quick`` shrinks every size for a smoke test.

.. versionadded:: 0.1
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DemoConfig", "run_demo"]

#: The folder that holds the ``xt_plugins`` package (a source tree or site-packages): the
#: stages' ``PYTHONPATH``, so they import this very copy.
PACKAGE_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class DemoConfig:
    """Sizes and budgets of the demo (the defaults fit 15 minutes on 2 CPU cores).

    Attributes:
        out: output folder.
        slide_size: (width, height) of the large slide at level 0.
        train_slides: number of training slides and their (width, height).
        slide_mpp: microns per pixel the slide model works at.
        slide_region: region side of the slide model (px at ``slide_mpp``).
        slide_epochs: bundle training epochs.
        scene_size: (width, height) of the large SAR scene.
        train_scenes: number of SAR training scenes and their (width, height).
        sar_region: region side of the SAR model (px).
        sar_train_time: ``torchgeo fit`` time budget (DD:HH:MM:SS).
        seed: seed of all generated data.
    """

    out: Path = Path("demo_out")
    slide_size: tuple[int, int] = (40000, 30000)
    train_slides: tuple[int, tuple[int, int]] = (16, (3000, 2000))
    slide_mpp: float = 1.0
    slide_region: int = 128
    slide_epochs: int = 30
    scene_size: tuple[int, int] = (12000, 10000)
    train_scenes: tuple[int, tuple[int, int]] = (3, (2000, 1600))
    sar_region: int = 128
    sar_train_time: str = "00:00:02:00"
    seed: int = 0

    @classmethod
    def quick(cls, out: Path) -> DemoConfig:
        """A few-minute smoke-test version of the demo."""
        return cls(
            out=out, slide_size=(6000, 4500), train_slides=(4, (3000, 2000)), slide_epochs=2,
            scene_size=(1500, 1200), train_scenes=(3, (1200, 1000)), sar_train_time="00:00:00:15",
        )  # fmt: skip


#: Small region encoder used by both demo models (ConvNeXt, 32..256 channels).
SMALL_CONVNEXT = {"dims": [32, 64, 128, 256], "depths": [1, 1, 2, 1]}


@dataclass
class Stage:
    """One demo stage's record in ``summary.json``."""

    name: str
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    regions_per_second: float | None = None
    outputs: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    log: str = ""


def _run(name: str, cmd: list[str], cwd: Path, log_dir: Path, env: dict[str, str]) -> Stage:
    """Run a stage's command; record wall time and the child's own peak RSS (``wait4``)."""
    log = log_dir / f"{name}.log"
    start = time.perf_counter()
    with log.open("w") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    stage = Stage(name, time.perf_counter() - start, usage.ru_maxrss / 1024.0, log=str(log))
    if proc.returncode != 0:
        tail = log.read_text().strip().splitlines()[-5:]
        raise RuntimeError(f"demo stage {name!r} failed (see {log}): " + " | ".join(tail))
    return stage


def _py(*args: str) -> list[str]:
    return [sys.executable, *args]


def run_demo(config: DemoConfig | None = None) -> dict[str, Any]:
    """Run every demo stage and write ``summary.json``.

    Args:
        config: sizes and budgets (default: :class:`DemoConfig`).

    Returns:
        The summary (also written to ``<out>/summary.json``).

    Raises:
        RuntimeError: when a stage fails (the message names its log file).
    """
    from tqdm.auto import tqdm

    cfg = config or DemoConfig()
    out = Path(cfg.out).resolve()
    data, logs = out / "data", out / "logs"
    big_slide_dir, big_scene_root = data / "slide", data / "scene"
    for d in (data, logs, big_slide_dir, big_scene_root):
        d.mkdir(parents=True, exist_ok=True)
    from .resources import shipped_path

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(PACKAGE_ROOT)}
    bundle = out / "bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.copytree(shipped_path("recipes") / "wsi_tumor_classification", bundle)
    slide_over = bundle / "demo_overrides.json"
    slide_over.write_text(json.dumps({
        "mpp": cfg.slide_mpp, "region_size": cfg.slide_region, "epochs": cfg.slide_epochs,
        "val_fraction": 0.25 if cfg.train_slides[0] >= 8 else 0.34,  # >= 1 per class
        "learning_rate": 2e-4, "thumbnail_size": 1024,
        "network_def#region_encoder": "convnext_tiny", "network_def#context_pool": 1,
        "network_def#context_dim": 128,
        **{f"network_def#{k}": v for k, v in SMALL_CONVNEXT.items()},
    }))  # fmt: skip
    n_slides, (sw, sh) = cfg.train_slides
    n_scenes, (cw, ch) = cfg.train_scenes
    sar_model = json.dumps({**SMALL_CONVNEXT, "context_kwargs": {"depth": 1}, "context_dim": 128})
    stages: list[tuple[str, str, list[str], Path]] = [
        (
            "make_slides",
            "generating slides",
            _py(
                "-m",
                "xt_plugins.cli",
                "make-slides",
                str(data / "slides"),
                "--n",
                str(n_slides),
                "--size",
                f"{sw}x{sh}",
                "--mpp",
                "0.5",
                "--seed",
                str(cfg.seed),
            ),
            out,
        ),
        (
            "make_big_slide",
            f"generating a {cfg.slide_size[0]} x {cfg.slide_size[1]} px slide",
            _py(
                "-c",
                "import sys; from xt_plugins.data import make_slide; "
                f"make_slide(sys.argv[1], {cfg.slide_size[0]}, {cfg.slide_size[1]}, mpp=0.5, "
                f"seed={cfg.seed + 100}, tumor=True, progress=True)",
                str(big_slide_dir / "big_slide.tiff"),
            ),
            out,
        ),
        (
            "train_slide_bundle",
            "fine-tuning the MONAI bundle",
            _py(
                "-m",
                "monai.bundle",
                "run",
                "--config_file",
                "configs/train.yaml",
                "--bundle_root",
                str(bundle),
                "--dataset_dir",
                str(data / "slides"),
                "--args_file",
                str(slide_over),
            ),
            bundle,
        ),
        (
            "infer_slide_bundle",
            "whole-slide inference (bundle)",
            _py(
                "-m",
                "monai.bundle",
                "run",
                "--config_file",
                "configs/inference.yaml",
                "--bundle_root",
                str(bundle),
                "--dataset_dir",
                str(big_slide_dir),
                "--output_dir",
                str(out / "slide"),
                "--args_file",
                str(slide_over),
            ),
            bundle,
        ),
        (
            "make_sar_scenes",
            "generating SAR scenes",
            _py(
                "-m",
                "xt_plugins.cli",
                "make-sar-scenes",
                str(out / "data" / "sar_scenes"),
                "--n",
                str(n_scenes),
                "--size",
                f"{cw}x{ch}",
                "--seed",
                str(cfg.seed),
            ),
            out,
        ),
        (
            "make_big_scene",
            f"generating a {cfg.scene_size[0]} x {cfg.scene_size[1]} px scene",
            _py(
                "-c",
                "import sys; from xt_plugins.data import make_sar_scene; "
                f"make_sar_scene(sys.argv[1], {cfg.scene_size[1]}, {cfg.scene_size[0]}, "
                f"seed={cfg.seed + 100}, progress=True)",
                str(big_scene_root / "big_scene"),
            ),
            out,
        ),
        (
            "train_sar_torchgeo",
            "fine-tuning with torchgeo fit",
            [
                str(Path(sys.executable).with_name("torchgeo")),
                "fit",
                "--config",
                str(shipped_path("configs") / "torchgeo" / "vessel_detection.yaml"),
                "--model.init_args.model=xt_convnext_tiny_mamba",
                f"--model.init_args.region_size={cfg.sar_region}",
                "--model.init_args.decoder_channels=32",
                "--model.init_args.lr=1e-3",
                f"--model.init_args.model_kwargs={sar_model}",
                f"--data.init_args.region_px={cfg.sar_region}",
                f"--data.init_args.window_px={cfg.sar_region * 4}",
                "--data.init_args.batch_size=4",
                "--data.init_args.num_workers=0",
                f"--trainer.max_time={cfg.sar_train_time}",
                "--trainer.max_epochs=1000",
                "--trainer.enable_progress_bar=false",
                f"--trainer.default_root_dir={out / 'sar_training'}",
            ],
            out,
        ),
    ]
    summary: dict[str, Any] = {"config": {k: str(v) for k, v in asdict(cfg).items()}, "stages": []}
    total_start = time.perf_counter()
    bar = tqdm(total=len(stages) + 1, desc="xt-plugins demo", unit="stage")
    for name, label, cmd, cwd in stages:
        bar.set_postfix_str(label)
        stage = _run(name, cmd, cwd, logs, env)
        summary["stages"].append(stage)
        bar.update(1)
    ckpt = _last_checkpoint(out / "sar_training")
    bar.set_postfix_str("whole-scene inference (predict-scene)")
    cmd = _py("-m", "xt_plugins.cli", "predict-scene", str(ckpt), str(big_scene_root / "big_scene"))
    cmd += [
        "--out",
        str(out / "sar"),
        "--window-regions",
        "10",
        "--overlap-regions",
        "1",
        "--no-progress",
    ]
    stage = _run("infer_scene", cmd, out, logs, env)
    summary["stages"].append(stage)
    bar.update(1)
    bar.close()
    _describe_outputs(summary["stages"], out, cfg)
    summary["total_seconds"] = time.perf_counter() - total_start
    summary["stages"] = [asdict(s) for s in summary["stages"]]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _last_checkpoint(root: Path) -> Path:
    ckpts = sorted(root.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not ckpts:
        raise RuntimeError(f"torchgeo fit wrote no checkpoint under {root}")
    return ckpts[-1]


def _describe_outputs(stages: list[Stage], out: Path, cfg: DemoConfig) -> None:
    """Fill in regions/s and the output files of the inference stages; draw the SAR heatmap."""
    by_name = {s.name: s for s in stages}
    rows = list(csv.DictReader((out / "slide" / "predictions.csv").open()))
    slide = by_name["infer_slide_bundle"]
    tissue = sum(int(r.get("tissue_regions") or 0) for r in rows)
    seconds = sum(float(r.get("seconds") or 0) for r in rows)
    slide.regions_per_second = tissue / seconds if seconds else None
    if rows:  # the large slide is generated with tumor: the right answer is 1
        slide.metrics = {
            "slide_prediction": int(rows[0]["prediction"]),
            "tumor_probability": float(rows[0]["probability"]),
            "tumour_probability": float(rows[0]["probability"]),  # deprecated spelling (0.1)
            "true_label": 1,
            "positive_regions": int(rows[0]["positive_regions"]),
            "tissue_regions": int(rows[0]["tissue_regions"]),
        }
    slide.outputs = sorted(str(p.relative_to(out)) for p in (out / "slide").iterdir())
    scene = by_name["infer_scene"]
    scene_dir = out / "sar" / "big_scene"
    w, h = cfg.scene_size
    scene.regions_per_second = (w // cfg.sar_region + 1) * (h // cfg.sar_region + 1) / scene.seconds
    png = _sar_heatmap(out / "data" / "scene" / "big_scene", scene_dir)
    scene.metrics = _scene_score(
        scene_dir / "detections.csv", out / "data" / "scene" / "big_scene" / "detections.csv"
    )
    scene.outputs = sorted(str(p.relative_to(out)) for p in scene_dir.iterdir()) + [
        str(png.relative_to(out))
    ]


def _scene_score(pred_csv: Path, truth_csv: Path) -> dict[str, Any]:
    """xView3 scores of the scene's detections against the generator's ground truth."""
    import pandas as pd

    from .torchgeo.metrics import xview3_score

    pred, truth = pd.read_csv(pred_csv), pd.read_csv(truth_csv)
    scores = xview3_score(pred, truth)
    return {
        "detections": len(pred),
        "true_vessels": len(truth),
        **{f"xview3_{k}": round(float(v), 4) for k, v in scores.items()},
    }


def _sar_heatmap(scene: Path, pred: Path) -> Path:
    """PNG of the centre-probability band over a VV thumbnail."""
    import numpy as np

    from .io import RasterSource, save_heatmap_png

    vv = RasterSource(scene / "VV_dB.tif")
    thumb = vv.thumbnail(1024)[..., 0].astype(np.float32)
    valid = np.isfinite(thumb) & (thumb > -100)
    lo, hi = np.percentile(thumb[valid], [2, 98]) if valid.any() else (0.0, 1.0)
    gray = (np.clip((thumb - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
    prob = RasterSource(pred / "probabilities.tif", bands=[1])
    heat = _max_thumbnail(prob, 1024)  # vessels are a few pixels: averaging would erase them
    vv.close()
    prob.close()
    return save_heatmap_png(
        heat, pred / "heatmap.png", background=np.repeat(gray[..., None], 3, -1)
    )


def _max_thumbnail(source: Any, max_side: int) -> Any:
    """(h, w) max-pooled overview of band 1 of a raster, read in strips (bounded memory)."""
    import math

    import numpy as np

    _, height, width = source.shape
    f = max(1, math.ceil(max(height, width) / max_side))
    rows, cols = math.ceil(height / f), math.ceil(width / f)
    out = np.zeros((rows, cols), np.float32)
    strip = 64  # output rows per read
    for r0 in range(0, rows, strip):
        r1 = min(rows, r0 + strip)
        block = source.read(r0 * f, 0, (r1 - r0) * f, cols * f)[0].astype(np.float32)
        block = np.nan_to_num(block, nan=0.0)  # outside the scene / nodata: nothing detected
        out[r0:r1] = block.reshape(r1 - r0, f, cols, f).max(axis=(1, 3))
    return out
