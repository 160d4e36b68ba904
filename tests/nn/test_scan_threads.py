"""The streaming scan's thread governor: 1 or all threads per chunk, from measured cost."""

import pytest
import torch

from xt_plugins.nn.ops import selective_scan, selective_scan_ref, threads
from xt_plugins.nn.ops.threads import ThreadGovernor


def _feed(gov, bucket, wide, cost_of, steps):
    """Run ``steps`` units through ``gov`` with synthetic costs; return the counts chosen."""
    chosen = []
    for _ in range(steps):
        n, exploring = gov.choose(bucket, wide)
        gov.record(bucket, n, cost_of[n], 1, exploring)
        chosen.append(n)
    return chosen


def test_governor_measures_both_then_keeps_the_cheaper():
    gov = ThreadGovernor(budget=0.05)
    assert gov.choose(7, 2) == (2, True)  # nothing measured: all threads first
    chosen = _feed(gov, 7, 2, {1: 1.0, 2: 20.0}, 1500)  # a busy machine: 2 threads 20x slower
    assert chosen[:2] == [2, 1]
    assert gov.best(7, 2) == 1
    total, retried = gov.spent[7]
    retries = chosen[2:].count(2)
    assert 1 <= retries and retried <= 0.05 * total + 20.0  # within budget (+ one re-try)
    assert chosen[-50:].count(1) >= 48


def test_governor_switches_back_when_the_load_goes():
    gov = ThreadGovernor(budget=0.05)
    _feed(gov, 3, 2, {1: 1.0, 2: 20.0}, 50)
    assert gov.best(3, 2) == 1
    chosen = _feed(gov, 3, 2, {1: 1.0, 2: 0.6}, 2000)  # quiet again: 2 threads faster
    assert gov.best(3, 2) == 2 and chosen[-100:].count(2) >= 90
    assert 8 not in {b for b, _ in gov.cost}  # sizes are kept apart


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    threads.GOVERNOR.reset()
    yield
    torch.set_num_threads(before)
    threads.GOVERNOR.reset()


def _inputs(length=600, b=1, d=16, n=4):
    g = torch.Generator().manual_seed(0)
    return dict(
        u=torch.randn(b, length, d, generator=g).transpose(1, 2),  # time-major views
        delta=torch.randn(b, length, d, generator=g).transpose(1, 2),
        A=-torch.rand(d, n, generator=g) - 0.1,
        B=torch.randn(b, length, n, generator=g).transpose(1, 2),
        C=torch.randn(b, length, n, generator=g).transpose(1, 2),
        D=torch.randn(d, generator=g),
        z=torch.randn(b, length, d, generator=g).transpose(1, 2),
        delta_bias=torch.randn(d, generator=g),
        delta_softplus=True,
    )


def test_governed_scan_matches_reference_measures_both_and_restores_threads(two_threads):
    x = _inputs()
    with torch.no_grad():
        ref = selective_scan_ref(**x)
        for _ in range(3):
            out = selective_scan(**x, chunk_size=16)  # 38 chunks per call
            torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
            assert torch.get_num_threads() == 2
    measured = {n for _, n in threads.GOVERNOR.cost}
    assert measured == {1, 2}


def test_fixed_threads_when_switched_off(two_threads, monkeypatch):
    monkeypatch.setattr(threads, "ADAPTIVE_THREADS", False)
    with torch.no_grad():
        selective_scan(**_inputs(), chunk_size=16)
    assert threads.GOVERNOR.cost == {} and torch.get_num_threads() == 2


def test_one_slow_chunk_does_not_flip_the_choice():
    gov = ThreadGovernor()
    _feed(gov, 5, 2, {1: 1.6, 2: 1.0}, 20)  # quiet: 2 threads faster
    assert gov.best(5, 2) == 2
    gov.record(5, 2, 50.0, 1, False)  # one chunk slowed by a passing job
    assert gov.best(5, 2) == 2
    gov.record(5, 2, 50.0, 1, False)  # the load stays: switch
    assert gov.best(5, 2) == 1
