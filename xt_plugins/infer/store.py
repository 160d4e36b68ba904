"""The run store: per-region encoder results of one input, in memory or in a Zarr group.

Layout of a store on disk (a Zarr v3 group):

- ``tokens`` (R, T, C) float32 and ``region_sum`` (R, C) float32: each encoded region's
  context tokens and the sum of its valid last-stage tokens; chunks of never-written regions
  read as NaN, so a lost chunk is seen, never read as zeros;
- ``state`` (R,) int8: 0 to do, 1 encoded, 2 skipped (invalid or masked); a region's state is
  written only after its data, so an interrupted run never marks unwritten data as done;
- maps written at the end (``probs``, ``dense``, ...) and the attribute ``xt_plugins_run``:
  the identity of the run (:mod:`xt_plugins.infer.identity`), the layout, and once finished
  ``complete`` with the image-level result.

Resuming (``resume=True``) reuses a store only when its identity equals this run's; a store of
another input, model or settings is started afresh with one warning line. Damage is handled
where it is: unreadable or missing token chunks and unreadable state chunks are re-encoded, a
finished store whose maps do not match its state is recomputed, and a store that cannot be
opened at all, or that is not a run store, raises :class:`StoreError` naming it and the
``--no-resume`` option.

.. versionadded:: 0.2
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .identity import differing, jsonable

__all__ = ["RUN_ATTR", "RunStore", "StoreError", "TODO", "DONE", "SKIPPED"]

logger = logging.getLogger("xt_plugins")

#: Region states.
TODO, DONE, SKIPPED = 0, 1, 2
#: Group attribute holding the run's identity, layout and result.
RUN_ATTR = "xt_plugins_run"
#: Version of the store layout; stores of another version are started afresh.
STORE_VERSION = 2
#: Regions per chunk of the per-region arrays.
REGION_CHUNK = 256
STATE_CHUNK = 4096


class StoreError(RuntimeError):
    """A run store cannot be used (damaged beyond repair, or not a run store).

    .. versionadded:: 0.2
    """


def _hint(path: Path) -> str:
    return f"rerun with --no-resume (resume=False) to recompute it, or delete {path}"


def _short(err: BaseException) -> str:
    return " ".join(str(err).split())[:160] or type(err).__name__


class RunStore:
    """Per-region results of one run, resumable when its identity matches.

    Args:
        path: Zarr group folder, or None to keep everything in memory.
        identity: what the outputs depend on (input, weights, settings), plain JSON values.
        layout: ``num_regions``, ``tokens`` (per region) and ``channels``.
        resume: continue a store that exists at ``path`` (False: an existing path is an error).

    Attributes:
        state: (R,) int8 tensor of region states.
        resumed: True when an earlier run's regions were reused.

    Raises:
        FileExistsError: if ``path`` exists and ``resume`` is False.
        StoreError: if ``path`` holds something that is not a readable run store.
    """

    def __init__(
        self,
        path: str | Path | None,
        identity: Mapping[str, Any],
        layout: Mapping[str, int],
        *,
        resume: bool = False,
    ) -> None:
        self.path = None if path is None else Path(path)
        self.identity = jsonable(dict(identity))
        self.layout = {k: int(v) for k, v in layout.items()}
        self.resumed = False
        self.group: Any = None
        r, t, c = self.layout["num_regions"], self.layout["tokens"], self.layout["channels"]
        if self.path is None:
            self.tokens = torch.full((r, t, c), float("nan"))
            self.region_sum = torch.full((r, c), float("nan"))
            self.state = torch.zeros(r, dtype=torch.int8)
            return
        if self.path.exists():
            if not resume:
                raise FileExistsError(
                    f"{self.path} exists: pass resume=True to continue it, or choose a new out"
                )
            self.group = self._reopen()
        if self.group is None:
            self.group = self._create()
        self.state = self._read_state()
        self.resumed = bool((self.state != TODO).any())

    # ------------------------------------------------------------------------ opening
    def _reopen(self) -> Any:
        """The existing group if it is this run's store; None after wiping a stale one."""
        import zarr

        path = self.path
        try:
            group = zarr.open_group(str(path), mode="r+")
            run = group.attrs.get(RUN_ATTR)
            legacy = run is None and "state" in group and "num_regions" in group.attrs
        except Exception as err:
            raise StoreError(
                f"{path}: not a readable run store ({_short(err)}); {_hint(path)}"
            ) from None
        if run is None and not legacy:
            raise StoreError(
                f"{path}: exists but is not an xt-plugins run store; choose another output "
                "folder, or delete it"
            )
        if legacy or run.get("version") != STORE_VERSION:
            reason = "was written by an earlier xt-plugins version"
        else:
            diff = differing(run.get("identity", {}), self.identity, self.identity)
            if run.get("layout") != self.layout:
                diff.append("layout")
            if not diff:
                return group
            reason = f"was made from another {' / '.join(diff)}"
        logger.warning("%s: %s; starting afresh", path, reason)
        self._wipe()
        return None

    def _wipe(self) -> None:
        if self.path.is_dir():
            shutil.rmtree(self.path)
        elif self.path.exists():
            self.path.unlink()

    def _create(self) -> Any:
        import zarr

        r, t, c = self.layout["num_regions"], self.layout["tokens"], self.layout["channels"]
        group = zarr.open_group(str(self.path), mode="w")
        chunk = max(1, min(r, REGION_CHUNK))
        nan = float("nan")
        group.create_array(
            "tokens", shape=(r, t, c), chunks=(chunk, t, c), dtype="float32", fill_value=nan
        )
        group.create_array(
            "region_sum", shape=(r, c), chunks=(chunk, c), dtype="float32", fill_value=nan
        )
        group.create_array(
            "state",
            shape=(r,),
            chunks=(max(1, min(r, STATE_CHUNK)),),
            dtype="int8",
            fill_value=TODO,
        )
        group.attrs[RUN_ATTR] = {
            "version": STORE_VERSION,
            "identity": self.identity,
            "layout": self.layout,
            "complete": False,
        }
        return group

    def _read_state(self) -> Tensor:
        """Region states; unreadable chunks and unknown values become TODO (redone)."""
        arr = self.group["state"]
        r = self.layout["num_regions"]
        state = np.zeros(r, dtype=np.int8)
        step = arr.chunks[0]
        for s in range(0, r, step):
            try:
                state[s : s + step] = arr[s : s + step]
            except Exception as err:
                logger.warning(
                    "%s: state chunk at region %d unreadable (%s); re-encoding it",
                    self.path,
                    s,
                    _short(err),
                )
                arr[s : s + step] = np.zeros(min(step, r - s), dtype=np.int8)
        bad = ~np.isin(state, (TODO, DONE, SKIPPED))
        if bad.any():
            state[bad] = TODO
        return torch.from_numpy(state)

    # ------------------------------------------------------------------------ writing
    def put(self, idx: np.ndarray, tokens: Tensor, region_sum: Tensor) -> None:
        """Store encoded regions (data first, then their state)."""
        if self.group is None:
            self.tokens[idx] = tokens
            self.region_sum[idx] = region_sum
        else:
            self._write("tokens", idx, tokens.numpy())
            self._write("region_sum", idx, region_sum.numpy())
            self._write("state", idx, np.full(len(idx), DONE, dtype=np.int8))
        self.state[idx] = DONE

    def _write(self, name: str, idx: np.ndarray, values: np.ndarray) -> None:
        """Write rows of a per-region array; a chunk that cannot be read back is replaced.

        Writing part of a chunk reads it first: a corrupt chunk would fail every rerun. Its
        other regions are marked to do (re-encoded) and the chunk is written anew.
        """
        arr = self.group[name]
        try:
            arr.oindex[idx] = values
            return
        except Exception as err:
            reason = _short(err)
        step = arr.chunks[0]
        for s in sorted({int(i) // step * step for i in idx}):
            e = min(arr.shape[0], s + step)
            try:
                arr[s:e]
            except Exception:
                logger.warning(
                    "%s: %s chunk at region %d unreadable (%s); re-encoding it",
                    self.path,
                    name,
                    s,
                    reason,
                )
                fill = arr.fill_value if name != "state" else TODO
                arr[s:e] = np.full((e - s, *arr.shape[1:]), fill, dtype=arr.dtype)
                self.reset(np.arange(s, e))
        arr.oindex[idx] = values

    def skip(self, idx: np.ndarray) -> None:
        """Mark regions as skipped (never read again on resume)."""
        if self.group is not None and len(idx):
            self.group["state"].oindex[idx] = np.full(len(idx), SKIPPED, dtype=np.int8)
        self.state[idx] = SKIPPED

    def reset(self, idx: np.ndarray) -> None:
        """Mark regions to do again (their data was found damaged)."""
        if self.group is not None and len(idx):
            self.group["state"].oindex[idx] = np.zeros(len(idx), dtype=np.int8)
        self.state[idx] = TODO

    # ------------------------------------------------------------------------ reading
    def load(self) -> tuple[Tensor, Tensor, np.ndarray]:
        """All tokens (R, T, C), region sums (R, C) and the indices of damaged encoded regions.

        A region counts as damaged when its state says encoded but its chunk cannot be read
        or holds NaN (lost chunk); the caller re-encodes those.
        """
        if self.group is None:
            tokens, region_sum = self.tokens, self.region_sum
            damaged = self._nan_rows(tokens, region_sum)
            return tokens, region_sum, damaged
        r, t, c = self.layout["num_regions"], self.layout["tokens"], self.layout["channels"]
        tokens = torch.empty(r, t, c)
        region_sum = torch.empty(r, c)
        unreadable: list[int] = []
        step = self.group["tokens"].chunks[0]
        for s in range(0, r, step):
            e = min(r, s + step)
            try:
                tokens[s:e] = torch.from_numpy(self.group["tokens"][s:e])
                region_sum[s:e] = torch.from_numpy(self.group["region_sum"][s:e])
            except Exception as err:
                logger.warning(
                    "%s: regions %d-%d unreadable (%s); re-encoding them",
                    self.path,
                    s,
                    e - 1,
                    _short(err),
                )
                tokens[s:e] = float("nan")
                region_sum[s:e] = float("nan")
                unreadable.append(s)
        damaged = self._nan_rows(tokens, region_sum)
        if len(damaged) and not unreadable:
            logger.warning(
                "%s: %d encoded regions have no stored data (lost chunks); re-encoding them",
                self.path,
                len(damaged),
            )
        return tokens, region_sum, damaged

    def _nan_rows(self, tokens: Tensor, region_sum: Tensor) -> np.ndarray:
        done = self.state == DONE
        bad = done & (tokens.isnan().flatten(1).any(1) | region_sum.isnan().any(1))
        return np.flatnonzero(bad.numpy())

    # ------------------------------------------------------------------------ results
    @property
    def run_attrs(self) -> dict[str, Any]:
        """The ``xt_plugins_run`` attribute (empty in memory)."""
        return {} if self.group is None else dict(self.group.attrs.get(RUN_ATTR, {}))

    def write_map(self, name: str, values: Tensor) -> Any:
        """Write (or replace) a float32 map (C, H, W) in the group; returns the array."""
        group = self.group
        if name in group:
            del group[name]
        chunks = (values.shape[0], min(values.shape[1], 512), min(values.shape[2], 512))
        arr = group.create_array(
            name, shape=tuple(values.shape), chunks=chunks, dtype="float32", fill_value=float("nan")
        )
        arr[:] = values.numpy()
        return arr

    def finish(self, result: Mapping[str, Any], keep_tokens: bool = True) -> None:
        """Record the image-level result and mark the store complete.

        Args:
            result: plain values (logits, ...) stored with the run.
            keep_tokens: keep ``tokens`` / ``region_sum`` (False drops them: the maps and
                the result are all a finished run needs, and they are the large arrays).
        """
        if self.group is None:
            return
        if not keep_tokens:
            for name in ("tokens", "region_sum"):
                if name in self.group:
                    del self.group[name]
        run = self.run_attrs
        run.update(complete=True, tokens_kept=keep_tokens, result=jsonable(dict(result)))
        self.group.attrs[RUN_ATTR] = run

    def finished(self, maps: tuple[str, ...] = ("probs",)) -> dict[str, Any] | None:
        """The stored result of a complete run whose maps match its state, else None.

        A complete store whose maps are unreadable, or hold values off the encoded regions /
        NaN on them (a lost chunk), is reported in one warning line; the caller recomputes it.
        """
        run = self.run_attrs
        if not run.get("complete"):
            return None
        done = (self.state == DONE).numpy()
        for name in maps:
            problem = self._check_map(name, done)
            if problem:
                logger.warning(
                    "%s: finished store is damaged (%s); recomputing it", self.path, problem
                )
                return None
        return dict(run.get("result") or {})

    def _check_map(self, name: str, done: np.ndarray) -> str | None:
        if name not in self.group:
            return f"no {name!r} map"
        try:
            values = np.asarray(self.group[name][:])  # (C, rows, cols) per-region map
        except Exception as err:
            return f"{name!r} unreadable: {_short(err)}"
        finite = np.isfinite(values).all(axis=0).reshape(-1)
        if values.shape[1:] != () and finite.size == done.size and not np.array_equal(finite, done):
            lost = int((done & ~finite).sum())
            return f"{name!r} lacks {lost} of {int(done.sum())} encoded regions"
        return None

    def restart(self) -> None:
        """Throw away everything stored and start an empty store at the same path."""
        if self.group is None:
            self.tokens.fill_(float("nan"))
            self.region_sum.fill_(float("nan"))
            self.state.zero_()
        else:
            self._wipe()
            self.group = self._create()
            self.state = self._read_state()
        self.resumed = False
