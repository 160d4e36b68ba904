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


def make_geotiff_image(path: Path, size: int, channels: int = 3, tile: int = 512, seed: int = 0):
    """A tiled, deflate-compressed (C, size, size) uint8 GeoTIFF written block row by block row.

    The pixels are those of :func:`make_zarr_image` (blocky texture shifted per 1024 block), so
    the zarr and GeoTIFF cases of a benchmark stream the same image. Returns the path.
    """
    import numpy as np
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    path = Path(path)
    if path.exists():
        with rasterio.open(path) as ds:
            if (ds.count, ds.height, ds.width) == (channels, size, size):
                return path
    chunk = 1024
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 255, size=(channels, chunk // 16, chunk // 16), dtype=np.uint8)
    base = np.repeat(np.repeat(low, 16, axis=1), 16, axis=2)
    profile = dict(
        driver="GTiff", height=size, width=size, count=channels, dtype="uint8",
        crs="EPSG:32631", transform=Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4650000.0),
        tiled=True, blockxsize=tile, blockysize=tile, compress="deflate", BIGTIFF="IF_SAFER",
    )  # fmt: skip
    tmp = path.with_suffix(".part.tif")
    with rasterio.open(tmp, "w", **profile) as ds:
        for y in range(0, size, chunk):
            h = min(chunk, size - y)
            row = np.empty((channels, h, size), dtype=np.uint8)
            for x in range(0, size, chunk):
                w = min(chunk, size - x)
                shift = (y // chunk * 7 + x // chunk * 13) % 255
                row[:, :, x : x + w] = (base[:, :h, :w] + shift).astype(np.uint8)
            ds.write(row, window=Window(0, y, size, h))
    tmp.replace(path)
    return path


_NEIGHBOUR = r"""
import os, sys, time
import torch
threads, parent, n = int(sys.argv[1]), int(sys.argv[3]), int(sys.argv[4])
seconds = float(sys.argv[2])
torch.set_num_threads(threads)
a, b = torch.randn(n, n), torch.randn(n, n)
c = torch.empty(n, n)
print("ready", flush=True)
end, i = time.monotonic() + seconds, 0
while time.monotonic() < end:
    torch.mm(a, b, out=c)
    i += 1
    if i % 16 == 0 and os.getppid() != parent:
        break  # the benchmark died: do not outlive it
"""


class BusyNeighbour:
    """A second process doing float32 matmuls on ``threads`` cores while the block runs.

    It stands for the other jobs of a shared machine (DataLoader workers, a second training
    run). Bounded and self-stopping: it exits after ``max_seconds``, when its parent process is
    gone, or when the ``with`` block ends (terminated, then killed). Use as::

        with BusyNeighbour(threads=2):
            time_something()
    """

    def __init__(self, threads: int = 2, max_seconds: float = 600.0, size: int = 512) -> None:
        self.threads, self.max_seconds, self.size = threads, max_seconds, size
        self.proc = None

    def __enter__(self) -> BusyNeighbour:
        import subprocess

        args = [str(self.threads), str(self.max_seconds), str(os.getpid()), str(self.size)]
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _NEIGHBOUR, *args], stdout=subprocess.PIPE, text=True, env=env
        )
        line = self.proc.stdout.readline()  # wait until its matmuls start
        if line.strip() != "ready":
            self.__exit__()
            raise RuntimeError("the busy-neighbour process failed to start")
        return self

    def __exit__(self, *exc: Any) -> None:
        import subprocess

        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.proc = None


def alternate(fns: dict[str, Any], repeats: int = 3, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each zero-argument callable, run in turn (a, b, a, b, ...) after a warm-up.

    Alternating spreads a noisy machine's slow spells over every contender; report medians.
    """
    import time

    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def median(values: list[float]) -> float:
    import statistics

    return float(statistics.median(values)) if values else float("nan")
