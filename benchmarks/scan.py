"""Selective-scan speed on CPU: chunked pure-PyTorch ``selective_scan`` vs the sequential reference.

Mamba-layer setting at initialisation: batch 1, d=512 channels, n=16 states, fp32, step sizes
through ``delta_bias`` + softplus (dt in [0.001, 0.1]), S4D-real ``A``, ``D`` and a ``z`` gate.
Warm-up once, then the median of ``--repeats`` runs, scan and reference alternating (so both
see the same load on a shared machine); the sequential reference runs once above
``--ref-once-above`` tokens and is skipped (recorded as null, with the reason) above
``--ref-max-length`` or when its (b, d, l, n) tensors would not fit in free memory.

``--threads-compare`` times the scan with 1 thread, with ``--threads`` threads held fixed
(``ADAPTIVE_THREADS = False``, the scan before the thread governor) and with the governor
choosing per chunk (the default), alternating; ``--busy`` does the same while a neighbour
process runs matmuls on every core (bounded: it stops after ``--busy-seconds`` or when this
process goes away). Results: ``scan_threads_quiet.json`` / ``scan_threads_busy.json`` + PNG.

Usage:
    python benchmarks/scan.py                       # 1k .. 64k tokens, 2 threads
    python benchmarks/scan.py --lengths 1024 4096 --threads 1
    python benchmarks/scan.py --threads-compare --lengths 1024 4096 16384
    python benchmarks/scan.py --busy --lengths 1024 4096 16384
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

# OpenMP's wait policy is left as the environment sets it (libgomp's default: spin briefly,
# then sleep), as in real use. OMP_WAIT_POLICY=PASSIVE helps on a heavily shared machine, where
# a spinning thread waits for a descheduled peer, but costs the scan's many small parallel ops
# about 2.5x on a quiet one (0.39 s vs 0.15 s at L=16k, 2 threads).
WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY", "default")

import torch  # noqa: E402

from xt_plugins.nn.ops import (  # noqa: E402
    auto_chunk_size,
    selective_scan,
    selective_scan_ref,
)
from xt_plugins.nn.ops import threads as scan_threads  # noqa: E402

DEFAULT_LENGTHS = [1024, 2048, 4096, 8192, 16384, 32768, 65536]


def make_inputs(length: int, d: int, n: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    dt = torch.exp(torch.rand(d, generator=g) * (math.log(0.1) - math.log(0.001)) + math.log(0.001))
    return dict(
        u=torch.randn(1, d, length, generator=g),
        delta=0.5 * torch.randn(1, d, length, generator=g),
        A=-torch.arange(1, n + 1, dtype=torch.float32).expand(d, n).contiguous(),
        B=torch.randn(1, n, length, generator=g),
        C=torch.randn(1, n, length, generator=g),
        D=torch.ones(d),
        z=torch.randn(1, d, length, generator=g),
        delta_bias=dt + torch.log(-torch.expm1(-dt)),  # inverse softplus
        delta_softplus=True,
    )


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_pair(scan, ref, repeats: int, ref_repeats: int, ref_warmup: bool):
    """Warm up, then alternate scan and reference runs so both see the same machine load."""
    scan()
    if ref is not None and ref_warmup:
        ref()
    scan_all, ref_all = [], []
    for i in range(repeats):
        scan_all.append(timed(scan))
        if ref is not None and i < ref_repeats:
            ref_all.append(timed(ref))
    return scan_all, ref_all


def ref_bytes(length: int, d: int, n: int) -> int:
    # exp(delta A) and delta B u as (b, d, l, n) float32, plus one einsum temporary
    return 3 * d * n * length * 4


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = [r["length"] for r in rows]
    fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax_t.loglog(lengths, [r["scan_s"] for r in rows], "o-", label="selective_scan (chunked)")
    ref = [(r["length"], r["ref_s"]) for r in rows if r["ref_s"] is not None]
    if ref:
        ax_t.loglog(*zip(*ref, strict=True), "s-", label="selective_scan_ref (sequential)")
    ax_t.set_xlabel("sequence length L (tokens)")
    ax_t.set_ylabel("seconds per scan (median)")
    ax_t.set_xscale("log", base=2)
    ax_t.grid(True, which="both", alpha=0.3)
    ax_t.legend()
    sp = [(r["length"], r["speedup"]) for r in rows if r["speedup"] is not None]
    if sp:
        ax_s.semilogx(*zip(*sp, strict=True), "o-", color="tab:green")
        for x, y in sp:
            ax_s.annotate(
                f"{y:.0f}x", (x, y), textcoords="offset points", xytext=(0, 6), ha="center"
            )
    ax_s.axhline(20, color="grey", ls="--", lw=1, label="20x target")
    ax_s.set_xscale("log", base=2)
    ax_s.set_xlabel("sequence length L (tokens)")
    ax_s.set_ylabel("speedup over the sequential reference")
    ax_s.set_ylim(bottom=0)
    ax_s.grid(True, which="both", alpha=0.3)
    ax_s.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def neighbour(seconds: float, threads: int, parent: int) -> None:
    """Busy neighbour: matmuls on ``threads`` threads until ``seconds`` pass or the parent exits."""
    torch.set_num_threads(threads)
    a, b = torch.randn(384, 384), torch.randn(384, 384)
    stop = time.monotonic() + seconds
    while time.monotonic() < stop and os.getppid() == parent:
        for _ in range(20):
            a = torch.mm(a, b).tanh_()


def start_neighbour(seconds: float, threads: int) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--_neighbour", str(seconds), "--threads", str(threads)]
    proc = subprocess.Popen(cmd)
    time.sleep(1.0)  # let it start its threads
    return proc


MODES = ("1 thread", "fixed", "adaptive")


def run_mode(mode: str, threads: int, fn) -> float:
    torch.set_num_threads(1 if mode == "1 thread" else threads)
    scan_threads.ADAPTIVE_THREADS = mode == "adaptive"
    try:
        return timed(fn)
    finally:
        scan_threads.ADAPTIVE_THREADS = True
        torch.set_num_threads(threads)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def threads_compare(args) -> None:
    """1 thread vs ``--threads`` fixed vs ``--threads`` with the governor, quiet or busy."""
    d, n, threads = args.dim, args.state, args.threads
    label = "busy" if args.busy else "quiet"
    proc = start_neighbour(args.busy_seconds, psutil.cpu_count()) if args.busy else None
    load_start = os.getloadavg()[0]
    rows = []
    try:
        with torch.inference_mode():
            for length in args.lengths:
                x = make_inputs(length, d, n)
                fn = functools.partial(selective_scan, **x)
                modes = [m for m in MODES if m in args.modes]
                runs: dict[str, list[float]] = {m: [] for m in modes}
                for m in modes:  # warm-up (and the governor's first measurements)
                    run_mode(m, threads, fn)
                for _ in range(args.repeats):
                    for m in modes:
                        runs[m].append(run_mode(m, threads, fn))
                med = {m: statistics.median(runs[m]) if m in runs else None for m in MODES}
                one = med["1 thread"]
                rows.append(
                    dict(
                        length=length,
                        one_thread_s=one,
                        fixed_s=med["fixed"],
                        adaptive_s=med["adaptive"],
                        adaptive_over_one=ratio(med["adaptive"], one),
                        fixed_over_one=ratio(med["fixed"], one),
                        adaptive_over_fixed=ratio(med["adaptive"], med["fixed"]),
                        runs_s=runs,
                    )
                )
                cells = "  ".join(f"{m} {fmt(med[m], '.3f')} s" for m in MODES)
                print(
                    f"[{label}] L={length:>6}  {cells}  adaptive / 1 thread "
                    f"{fmt(rows[-1]['adaptive_over_one'], '.2f')}  adaptive / fixed "
                    f"{fmt(rows[-1]['adaptive_over_fixed'], '.2f')}",
                    flush=True,
                )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
    config = dict(
        torch=torch.__version__,
        threads=threads,
        d=d,
        n=n,
        batch=1,
        dtype="float32",
        repeats=args.repeats,
        statistic="median",
        neighbour=(
            f"{psutil.cpu_count()}-thread matmul process for up to {args.busy_seconds} s"
            if args.busy
            else None
        ),
        omp_wait_policy=WAIT_POLICY,
        cpu_count=psutil.cpu_count(),
        loadavg_1min=dict(start=load_start, end=os.getloadavg()[0]),
        governor_costs={f"{k[0]}/{k[1]}": v for k, v in scan_threads.GOVERNOR.cost.items()},
        note="shared machine: other processes' load is recorded; compare ratios, not seconds",
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"scan_threads_{label}.json"
    path.write_text(json.dumps(dict(config=config, results=rows), indent=2))
    plot_threads(rows, args.out / f"scan_threads_{label}.png", label, threads)
    print(f"1-min load average: {load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end")
    print(f"wrote {path}")


def plot_threads(rows: list[dict], path: Path, label: str, threads: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for key, name in (
        ("one_thread_s", "1 thread"),
        ("fixed_s", f"{threads} threads, fixed"),
        ("adaptive_s", f"{threads} threads, adaptive"),
    ):
        pts = [(r["length"], r[key]) for r in rows if r[key] is not None]
        if pts:
            ax.loglog(*zip(*pts, strict=True), "o-", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length L (tokens)")
    ax.set_ylabel("seconds per scan (median)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(f"selective scan, CPU fp32, d=512, n=16, {label} machine", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=DEFAULT_LENGTHS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--dim", type=int, default=512, help="channels d")
    parser.add_argument("--state", type=int, default=16, help="state size n")
    parser.add_argument(
        "--chunk-size", type=int, default=None, help="default: selective_scan's (auto_chunk_size)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ref-once-above", type=int, default=16384)
    parser.add_argument("--ref-max-length", type=int, default=65536)
    parser.add_argument(
        "--threads-compare", action="store_true", help="1 thread vs fixed vs adaptive threads"
    )
    parser.add_argument(
        "--busy", action="store_true", help="--threads-compare next to a busy neighbour"
    )
    parser.add_argument("--busy-seconds", type=float, default=600.0, help="neighbour's limit")
    parser.add_argument(
        "--modes",
        nargs="+",
        default=list(MODES),
        choices=MODES,
        help="thread settings to compare (fixed threads are slow on a busy machine)",
    )
    parser.add_argument("--_neighbour", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._neighbour is not None:
        neighbour(args._neighbour, args.threads, os.getppid())
        return
    if args.threads_compare or args.busy:
        torch.set_num_threads(args.threads)
        threads_compare(args)
        return

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    chunk_kw = {} if args.chunk_size is None else {"chunk_size": args.chunk_size}
    d, n = args.dim, args.state
    chunk_size = args.chunk_size or auto_chunk_size(1, d, n)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch 1, d={d}, n={n}, "
        f"fp32, chunk_size={chunk_size}, OMP_WAIT_POLICY={WAIT_POLICY}, "
        f"cpu: {platform.processor() or platform.machine()}"
    )

    load_start = os.getloadavg()[0]
    rows = []
    with torch.inference_mode():
        # correctness at the smallest length
        x = make_inputs(min(args.lengths), d, n)
        max_abs_diff = (
            (selective_scan(**x, **chunk_kw) - selective_scan_ref(**x)).abs().max().item()
        )
        print(f"max |scan - ref| at L={min(args.lengths)}: {max_abs_diff:.2e}")
        for length in args.lengths:
            x = make_inputs(length, d, n)
            note, ref, once = None, None, length > args.ref_once_above
            need = ref_bytes(length, d, n)
            free = psutil.virtual_memory().available
            if length > args.ref_max_length:
                note = f"reference skipped: L > --ref-max-length {args.ref_max_length}"
            elif need > 0.7 * free:
                note = f"reference skipped: needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} free"
            else:
                ref = functools.partial(selective_scan_ref, **x)
                if once:
                    note = f"reference: 1 run, no separate warm-up (L > {args.ref_once_above})"
            scan_all, ref_all = time_pair(
                functools.partial(selective_scan, **x, **chunk_kw),
                ref,
                args.repeats,
                1 if once else args.repeats,
                not once,
            )
            scan_s = statistics.median(scan_all)
            ref_s = statistics.median(ref_all) if ref_all else None
            rows.append(
                dict(
                    length=length,
                    scan_s=scan_s,
                    ref_s=ref_s,
                    speedup=None if ref_s is None else ref_s / scan_s,
                    scan_runs_s=scan_all,
                    ref_runs_s=ref_all,
                    note=note,
                )
            )
            r = rows[-1]
            sp = "-" if r["speedup"] is None else f"{r['speedup']:.1f}x"
            ref_txt = "null" if ref_s is None else f"{ref_s:.3f}"
            print(
                f"L={length:>6}  scan {scan_s:8.3f} s  ref {ref_txt:>8} s  speedup {sp}", flush=True
            )
            del x

    print()
    print(f"{'L':>7} | {'scan (s)':>9} | {'ref (s)':>9} | {'speedup':>8}")
    print("-" * 43)
    for r in rows:
        ref_txt = "null" if r["ref_s"] is None else f"{r['ref_s']:.3f}"
        sp = "-" if r["speedup"] is None else f"{r['speedup']:.1f}x"
        print(f"{r['length']:>7} | {r['scan_s']:>9.4f} | {ref_txt:>9} | {sp:>8}")
        if r["note"]:
            print(f"        ({r['note']})")

    config = dict(
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        batch=1,
        d=d,
        n=n,
        dtype="float32",
        device="cpu",
        chunk_size=chunk_size,
        repeats=args.repeats,
        statistic="median",
        cpu=platform.processor() or platform.machine(),
        cpu_count=psutil.cpu_count(),
        omp_wait_policy=WAIT_POLICY,
        inputs="Mamba init: dt in [1e-3, 0.1] via delta_bias+softplus, A=-(1..n), D, z",
        max_abs_diff_at_min_length=max_abs_diff,
        loadavg_1min=dict(start=load_start, end=os.getloadavg()[0]),
        note="shared machine: other processes' load is recorded; compare ratios, not seconds",
    )
    json_path = args.out / "scan.json"
    json_path.write_text(json.dumps(dict(config=config, results=rows), indent=2))
    png_path = args.out / "scan.png"
    plot(
        rows,
        png_path,
        f"selective scan, CPU fp32, batch 1, d={d}, n={n}, {config['threads']} threads, "
        f"chunk {chunk_size}",
    )
    print(f"1-min load average: {load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end")
    print(f"\nwrote {json_path} and {png_path}")


if __name__ == "__main__":
    main()
