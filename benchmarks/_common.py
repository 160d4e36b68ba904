"""Shared helpers for the benchmark scripts: results folder, JSON + PNG, memory readings."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def save(name: str, data: dict[str, Any], out: Path | None = None) -> Path:
    out = Path(out or RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    data = {"benchmark": name, "machine": machine(), **data}
    path.write_text(json.dumps(data, indent=2, default=float))
    print(f"wrote {path}")
    return path


def figure_path(name: str, out: Path | None = None) -> Path:
    out = Path(out or RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    return out / f"{name}.png"


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def uss_mb() -> float:
    import psutil

    return psutil.Process().memory_full_info().uss / 2**20


def run_child(args: list[str], timeout: float | None = None) -> dict[str, Any]:
    """Run ``python this_script.py --child ...`` in a fresh process; parse its last JSON line."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"ok": False, "returncode": proc.returncode, "error": " | ".join(tail) or "killed"}


def make_zarr_image(path: Path, size: int, channels: int = 3, chunk: int = 1024, seed: int = 0):
    """A (C, size, size) uint8 zarr image written chunk by chunk (textured, compressible)."""
    import numpy as np
    import zarr

    path = Path(path)
    if path.exists():
        arr = zarr.open_array(str(path), mode="r")
        if arr.shape == (channels, size, size):
            return arr
    arr = zarr.create_array(
        str(path),
        shape=(channels, size, size),
        chunks=(channels, chunk, chunk),
        dtype="uint8",
        overwrite=True,
    )
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 255, size=(channels, chunk // 16, chunk // 16), dtype=np.uint8)
    base = np.repeat(np.repeat(low, 16, axis=1), 16, axis=2)  # blocky texture, compresses well
    for y in range(0, size, chunk):
        for x in range(0, size, chunk):
            h, w = min(chunk, size - y), min(chunk, size - x)
            shift = (y // chunk * 7 + x // chunk * 13) % 255
            arr[:, y : y + h, x : x + w] = (base[:, :h, :w] + shift).astype(np.uint8)
    return arr
