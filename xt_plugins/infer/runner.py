"""Many inputs: expansion, output naming, the predictions table, failure isolation and ranks.

``predict-slide`` and ``predict-scene`` both run through :func:`run_inputs`:

- :func:`expand_inputs` turns files and folders into :class:`InputItem` s; a folder that is
  not an input and holds none (or a folder named like an image, ``x.svs/``) becomes one
  failing input, never an abort;
- :func:`output_names` names every input's outputs by its stem, and inputs whose stems
  collide by their paths relative to their common folder (``a/slide.tiff`` and
  ``b/slide.tiff`` -> ``a/slide`` and ``b/slide``), adding a short hash of the path only when
  names would still collide (``slide.svs`` and ``slide.tiff`` side by side);
- :class:`PredictionTable` keeps ``predictions.csv`` keyed by the input's absolute path: rows
  of other inputs (earlier runs into the same folder) are kept, and the file is rewritten
  atomically after each input, so an interrupted run loses nothing it finished;
- :func:`run_inputs` isolates failures (one line per failing input, the others are written);
- :func:`rank_split` / :func:`merge_rank_tables` split inputs across ``torchrun`` ranks and
  merge their tables on rank 0.

.. versionadded:: 0.2
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("xt_plugins")

__all__ = [
    "InputItem",
    "native_noise_muted",
    "atomic_dir",
    "PredictionTable",
    "expand_inputs",
    "merge_rank_tables",
    "output_names",
    "rank_split",
    "run_inputs",
    "unwritable_reason",
]


@dataclass
class InputItem:
    """One input of a many-input run.

    Attributes:
        path: the input file or folder, as given (expanded).
        key: its absolute path: the key of its row in ``predictions.csv``.
        name: where its outputs go, relative to the output folder, without suffix.
        label: the true label when the input list has one.
        error: why the input cannot be used (set during expansion), or None.
    """

    path: Path
    key: str = ""
    name: str = ""
    label: Any = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.path = Path(self.path).expanduser()
        self.key = self.key or str(self.path.resolve())


def expand_inputs(
    entries: Iterable[str | os.PathLike[str] | Mapping[str, Any]],
    *,
    suffixes: Iterable[str],
    is_input: Callable[[Path], bool] | None = None,
    list_folder: Callable[[Path], list[Mapping[str, Any]]] | None = None,
    what: str = "input",
) -> list[InputItem]:
    """Input items of files, folders and data-list items, named by :func:`output_names`.

    Args:
        entries: paths (files or folders) or dict items ``{"image": path, "label": ...}``.
        suffixes: file suffixes that are inputs (lower case, with the dot).
        is_input: says whether a folder is itself one input (a scene folder); default: no.
        list_folder: lists a folder's inputs as dict items (e.g. with labels from a
            ``labels.csv``); default: its files with one of ``suffixes``, sorted.
        what: the word for an input in messages (``slide``, ``scene``).

    Returns:
        The items in input order, duplicates (same absolute path) dropped. Missing files stay
        items (they fail as their own input).
    """
    suffixes = {s.lower() for s in suffixes}
    items: list[InputItem] = []
    for entry in entries:
        if isinstance(entry, Mapping):
            items.append(InputItem(Path(entry["image"]), label=entry.get("label")))
            continue
        p = Path(entry).expanduser()
        if not p.is_dir() or (is_input is not None and is_input(p)):
            items.append(InputItem(p))
            continue
        if p.suffix.lower() in suffixes:
            items.append(InputItem(p, error=f"{p}: is a folder, not a {what} file"))
            continue
        try:
            found = list_folder(p) if list_folder else _folder_files(p, suffixes)
        except (OSError, ValueError) as err:
            items.append(InputItem(p, error=str(err).splitlines()[0]))
            continue
        if not found:
            kinds = " ".join(sorted(suffixes)) if is_input is None else f"{what} folders"
            items.append(InputItem(p, error=f"{p}: no {what}s in this folder ({kinds})"))
            continue
        for item in found:
            items.append(InputItem(Path(item["image"]), label=item.get("label")))
    unique: dict[str, InputItem] = {}
    for item in items:
        unique.setdefault(item.key, item)
    items = list(unique.values())
    for item, name in zip(items, output_names([i.path for i in items]), strict=True):
        item.name = name
    return items


def _folder_files(folder: Path, suffixes: set[str]) -> list[dict[str, Any]]:
    return [{"image": str(p)} for p in sorted(folder.iterdir()) if p.suffix.lower() in suffixes]


def output_names(paths: Sequence[Path]) -> list[str]:
    """Output names (relative paths without suffix) that never collide.

    An input is named by its stem (``slides/s1.svs`` -> ``s1``). Inputs whose stems collide
    are named by their paths relative to the common folder of those inputs instead
    (``a/slide.tiff``, ``b/slide.tiff`` -> ``a/slide``, ``b/slide``), and names that would
    still collide (``slide.svs`` next to ``slide.tiff``) get ``-<hash>`` of the absolute path.
    """
    resolved = [Path(p).expanduser().resolve() for p in paths]
    names = [p.stem if p.suffix else p.name for p in resolved]
    clash = _colliding(names)
    if clash:
        common = Path(os.path.commonpath([str(resolved[i].parent) for i in clash]))
        for i in clash:
            names[i] = str(resolved[i].relative_to(common).with_suffix(""))
    for i in _colliding(names):
        names[i] = f"{names[i]}-{hashlib.sha1(str(resolved[i]).encode()).hexdigest()[:8]}"
    return names


def _colliding(names: Sequence[str]) -> list[int]:
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return [i for i, name in enumerate(names) if counts[name] > 1]


@contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Write an output folder as ``<out>.partial`` and rename it over ``out`` when complete.

    A failure (or an interrupt) removes the partial folder: an input's outputs are either
    complete or absent, never half written.
    """
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)


class PredictionTable:
    """A CSV of one row per input, keyed by the input's absolute path, rewritten atomically.

    Args:
        path: the CSV file (read if it exists: its rows are kept).
        fields: column names; the key column is ``key_field``.
        key_field: the column holding the input key.
    """

    def __init__(
        self, path: str | os.PathLike[str], fields: Sequence[str], key_field: str = "path"
    ) -> None:
        self.path = Path(path)
        self.fields = list(fields)
        self.key_field = key_field
        self.rows: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            with self.path.open(newline="") as f:
                for row in csv.DictReader(f):
                    if row.get(key_field):
                        self.rows[row[key_field]] = row

    def update(self, row: Mapping[str, Any]) -> None:
        """Set the row of ``row[key_field]`` and rewrite the file."""
        self.rows[str(row[self.key_field])] = dict(row)
        self.write()

    def write(self) -> None:
        """Write every row to a temporary file next to the table, then rename it over."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
                writer.writeheader()
                for row in self.rows.values():
                    writer.writerow(
                        {k: ("" if row.get(k) is None else row[k]) for k in self.fields}
                    )
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@dataclass
class Outcome:
    """What happened to one input of :func:`run_inputs`."""

    item: InputItem
    result: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the input was predicted."""
        return self.error is None


@contextmanager
def native_noise_muted(*loggers: str) -> Iterator[None]:
    """Mute what libraries print themselves while an input runs; their errors still raise.

    C libraries (libtiff inside GDAL) write straight to file descriptor 2, and rasterio logs
    GDAL's messages; an input's failure is reported in one line by the runner instead. Python
    writes to ``sys.stderr`` (progress bars, warnings) still reach the terminal.

    Args:
        *loggers: names of Python loggers to silence for the duration (e.g. ``"rasterio"``).
    """
    import sys

    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in loggers]
    for log, _ in saved:
        log.setLevel(logging.CRITICAL)
    try:
        sys.stderr.flush()
        original = os.dup(2)
    except (OSError, ValueError):  # no real file descriptor 2 (embedded interpreters)
        original = None
    old_stderr = sys.stderr
    try:
        if original is not None:
            with tempfile.TemporaryFile() as sink:
                os.dup2(sink.fileno(), 2)
                sys.stderr = os.fdopen(os.dup(original), "w", buffering=1)
                try:
                    yield
                finally:
                    sys.stderr.flush()
                    sys.stderr.close()
                    sys.stderr = old_stderr
                    os.dup2(original, 2)
                    os.close(original)
        else:
            yield
    finally:
        for log, level in saved:
            log.setLevel(level)


def unwritable_reason(folder: str | os.PathLike[str]) -> str | None:
    """Why nothing can be written into ``folder`` (full disk, read-only mount), or None.

    GDAL reports a full disk as ``TIFFAppendToStrip: Write error``; this says what it means.
    """
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return f"{folder}: Read-only file system"
    if st.f_bavail * st.f_frsize < 1 << 20:
        return f"{folder}: No space left on device"
    return None


def one_line(item: InputItem, err: BaseException) -> str:
    """The error of an input as one line that names it."""
    message = " ".join(str(err).split()) or type(err).__name__
    if str(item.path) not in message and item.key not in message:
        message = f"{item.path}: {message}"
    return message


def run_inputs(
    items: Sequence[InputItem],
    predict: Callable[[InputItem], Any],
    *,
    row: Callable[[Outcome], Mapping[str, Any]] | None = None,
    table: PredictionTable | None = None,
    report: Callable[[Outcome], None] | None = None,
    errors: tuple[type[BaseException], ...] = (Exception,),
    progress: bool = False,
    what: str = "input",
) -> list[Outcome]:
    """Predict every input; a failing input is reported in one line and the others go on.

    Args:
        items: the inputs (see :func:`expand_inputs`).
        predict: predicts one input and returns its result.
        row: the predictions-table row of an outcome (needed with ``table``).
        table: updated (and rewritten) after each input.
        report: called with each outcome as it finishes (default: nothing).
        errors: exception types that fail one input (others propagate).
        progress: show a progress bar over the inputs.
        what: the word for an input on the progress bar.

    Returns:
        One :class:`Outcome` per input, in order.
    """
    from tqdm.auto import tqdm

    outcomes = []
    table_failed = False
    for item in tqdm(items, desc=f"{what}s", unit=what, disable=not progress):
        if item.error is not None:
            outcome = Outcome(item, error=item.error)
        else:
            try:
                outcome = Outcome(item, result=predict(item))
            except errors as err:
                outcome = Outcome(item, error=one_line(item, err))
        outcomes.append(outcome)
        if table is not None and row is not None:
            try:
                table.update(row(outcome))
            except OSError as err:  # a full disk or read-only folder: said once, inputs go on
                if not table_failed:
                    logger.warning("%s: cannot be written (%s)", table.path, err.strerror or err)
                table_failed = True
        if report is not None:
            report(outcome)
    return outcomes


# ---------------------------------------------------------------------------- ranks
def rank_split(items: Sequence[InputItem], rank: int, world: int) -> list[InputItem]:
    """The inputs of one rank (round robin, so ranks get similar mixes)."""
    return list(items[rank::world])


def init_rank_group(world: int, timeout_min: float) -> bool:
    """Start a gloo process group for the final barrier when a launcher set one up."""
    import torch.distributed as dist

    if world <= 1 or "MASTER_ADDR" not in os.environ or dist.is_initialized():
        return False
    dist.init_process_group("gloo", timeout=datetime.timedelta(minutes=timeout_min))
    return True


def merge_rank_tables(
    out: Path,
    table_name: str,
    fields: Sequence[str],
    rank: int,
    world: int,
    counts: tuple[int, int],
    timeout_min: float,
    order: Sequence[str] = (),
) -> tuple[int, int]:
    """Wait for every rank; rank 0 merges ``<table>.rank<R>.csv`` into ``<table>``.

    Rows are merged by input key into the existing table (rows of other inputs are kept, the
    ranks' rows follow in the order of the input keys ``order``). Without a process group the
    ranks meet through marker files.

    Returns:
        The global ``(ok, total)`` counts.
    """
    import torch
    import torch.distributed as dist

    stem = Path(table_name).stem
    parts = [out / f"{stem}.rank{r}.csv" for r in range(world)]
    markers = [out / f"{stem}.rank{r}.done" for r in range(world)]
    ok, total = counts
    if dist.is_initialized():
        reduced = torch.tensor([ok, total], dtype=torch.long)
        dist.all_reduce(reduced)  # also the barrier: every rank has written its table
        ok, total = (int(v) for v in reduced)
    else:
        markers[rank].write_text(f"{ok} {total}\n")
        if rank != 0:
            return ok, total
        deadline = time.monotonic() + timeout_min * 60
        while not all(m.is_file() for m in markers):
            if time.monotonic() > deadline:
                missing = [m.name for m in markers if not m.is_file()]
                raise TimeoutError(f"ranks did not finish in {timeout_min} min: {missing}")
            time.sleep(0.5)
        sums = [list(map(int, m.read_text().split())) for m in markers]
        ok, total = sum(s[0] for s in sums), sum(s[1] for s in sums)
    if rank == 0:
        merged = PredictionTable(out / table_name, fields)
        for part in parts:
            for key, row in PredictionTable(part, fields).rows.items():
                merged.rows[key] = row
        position = {key: i for i, key in enumerate(order)}
        keys = sorted(merged.rows, key=lambda k: (k in position, position.get(k, 0)))
        merged.rows = {k: merged.rows[k] for k in keys}
        merged.write()
        for path in parts + markers:
            path.unlink(missing_ok=True)
    return ok, total
