"""Thread count for the streaming scan, chosen from measured chunk times.

The no-grad scan (:mod:`.scan_chunked`) runs thousands of small ops per call. On a quiet machine
PyTorch's intra-op threads speed them up; when other processes share the cores (DataLoader
workers, a second job, a shared server) every parallel op waits at a barrier for a thread that
the OS has descheduled, and the scan with 2 threads became 50-75x slower than alone, and much
slower than with 1 thread (measurements in ``benchmarks/README.md``). No fixed rule fits both,
so :class:`ThreadGovernor` measures: each scan chunk runs with either all threads or one, its
time per element is kept per size (the median of its last few chunks, so one chunk slowed by a
passing job does not flip the choice), and the cheaper count is used. The
other count is re-tried only while those tries stay under ``budget`` (3 %) of the time spent,
so a busy machine pays at most that for noticing the load has gone, and a quiet one less
for checking it has not come.

``torch.set_num_threads`` is process-wide: while a scan runs, other Python threads' torch ops
see its choice. Set :data:`ADAPTIVE_THREADS` to False to keep the caller's thread count.

.. versionadded:: 0.2
"""

from __future__ import annotations

import math
import statistics
import threading
from collections import deque

import torch

__all__ = ["ADAPTIVE_THREADS", "ThreadGovernor", "GOVERNOR"]

#: Let the streaming scan choose between all threads and one per chunk (see module docs).
ADAPTIVE_THREADS = True


class ThreadGovernor:
    """Picks 1 or ``wide`` threads per unit of work from the recent measured cost of each.

    Args:
        budget: share of the measured time that re-tries of the slower choice may take.
        window: measurements per choice whose median is its cost.
    """

    def __init__(self, budget: float = 0.03, window: int = 3) -> None:
        self.budget = budget
        self.window = window
        self.cost: dict[tuple[int, int], float] = {}  # (size bucket, threads) -> s / element
        self._recent: dict[tuple[int, int], deque[float]] = {}
        self.spent: dict[int, list[float]] = {}  # size bucket -> [all seconds, re-try seconds]
        self._lock = threading.Lock()

    @staticmethod
    def bucket(elements: int) -> int:
        """Size class of a unit of work (powers of two of its element count)."""
        return max(0, int(math.log2(max(1, elements))))

    def best(self, bucket: int, wide: int) -> int:
        """The thread count with the lower measured cost (``wide`` until both are measured)."""
        one, many = self.cost.get((bucket, 1)), self.cost.get((bucket, wide))
        return 1 if one is not None and many is not None and one < many else wide

    def choose(self, bucket: int, wide: int) -> tuple[int, bool]:
        """Thread count for the next unit of work, and whether it is a re-try of the slower.

        Args:
            bucket: size class (:meth:`bucket`).
            wide: the thread count the caller runs with (> 1).

        Returns:
            ``(threads, exploring)``.
        """
        for threads in (wide, 1):
            if (bucket, threads) not in self.cost:
                return threads, True
        best = self.best(bucket, wide)
        total, retried = self.spent.get(bucket, (0.0, 0.0))
        if retried <= self.budget * total:
            return (1 if best == wide else wide), True
        return best, False

    def record(
        self, bucket: int, threads: int, seconds: float, elements: int, exploring: bool
    ) -> None:
        """Add one measurement: ``seconds`` for ``elements`` of work with ``threads``."""
        per = seconds / max(1, elements)
        with self._lock:
            key = (bucket, threads)
            recent = self._recent.setdefault(key, deque(maxlen=self.window))
            recent.append(per)
            self.cost[key] = statistics.median(recent)
            spent = self.spent.setdefault(bucket, [0.0, 0.0])
            spent[0] += seconds
            if exploring:
                spent[1] += seconds

    def reset(self) -> None:
        """Forget every measurement."""
        with self._lock:
            self.cost.clear()
            self._recent.clear()
            self.spent.clear()


#: The process-wide governor of the streaming scan.
GOVERNOR = ThreadGovernor()


class ScopedThreads:
    """Set ``torch``'s intra-op thread count only when it changes; restore it on exit."""

    def __init__(self) -> None:
        self.original = torch.get_num_threads()
        self.current = self.original

    def set(self, threads: int) -> None:
        """Run the following ops with ``threads`` threads."""
        if threads != self.current:
            torch.set_num_threads(threads)
            self.current = threads

    def __enter__(self) -> ScopedThreads:
        return self

    def __exit__(self, *exc: object) -> None:
        self.set(self.original)
