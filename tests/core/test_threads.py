"""core/threads.py: one thread per free core, at least one; a pinned count wins; a bad pin is one line."""

import pytest

from lm_eval_baking.constants import THREADS_ENV
from lm_eval_baking.core import threads
from lm_eval_baking.errors import BakingError


@pytest.mark.parametrize("cores, busy, expected", [
    ([0, 1], 0.0, 2),      # idle: every core
    ([0, 1], 0.4, 2),      # a little background work rounds away
    ([0, 1], 1.0, 1),      # one core taken by a neighbour
    ([0, 1], 2.0, 1),      # both taken: still one thread
    ([0, 1, 2, 3], 1.6, 2),
])
def test_one_thread_per_free_core(cores, busy, expected):
    assert threads.threads_for_free_cores(cores, busy) == expected


def test_pinned_count_wins(monkeypatch):
    for name in threads.PINNING_ENV:
        monkeypatch.delenv(name, raising=False)
    assert threads.pinned_threads() is None
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.pinned_threads() == 3
    monkeypatch.setenv(THREADS_ENV, "5")  # ours first
    assert threads.pinned_threads() == 5


def test_openmp_syntax_is_left_to_torch(monkeypatch):
    for name in threads.PINNING_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "4,2")
    assert threads.pinned_threads() is None


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_bad_pin_is_one_line(monkeypatch, value):
    monkeypatch.setenv(THREADS_ENV, value)
    with pytest.raises(BakingError, match=THREADS_ENV) as error:
        threads.pinned_threads()
    assert "\n" not in str(error.value)


def test_busy_cores_counts_niced_time(monkeypatch):
    """A niced neighbour still takes its core from decoding's tiny parallel regions: it counts as busy."""
    from collections import namedtuple

    import psutil

    Times = namedtuple("Times", "user nice system idle iowait")
    samples = [Times(20.0, 70.0, 5.0, 5.0, 0.0), Times(0.0, 0.0, 2.0, 93.0, 5.0)]
    monkeypatch.setattr(psutil, "cpu_times_percent", lambda interval, percpu: samples)
    assert threads.busy_cores([0, 1], seconds=0) == pytest.approx(0.95 + 0.02)
    # Over a short sample a VM's kinds need not add up to 100: shares of each core's own total.
    monkeypatch.setattr(psutil, "cpu_times_percent", lambda interval, percpu: [Times(30.0, 0.0, 0.0, 0.0, 0.0),
                                                                               Times(0.0, 0.0, 0.0, 30.0, 0.0)])
    assert threads.busy_cores([0, 1], seconds=0) == pytest.approx(1.0)
    assert threads.threads_for_free_cores([0, 1], threads.busy_cores([0, 1], seconds=0)) == 1


def test_busy_cores_leaves_out_this_process(monkeypatch):
    """Our own threads (OpenMP's spinning workers, a loader) are not a neighbour: their time is taken off."""
    from collections import namedtuple

    import psutil

    Times = namedtuple("Times", "user nice system idle iowait")
    Own = namedtuple("Own", "user system")
    monkeypatch.setattr(psutil, "cpu_times_percent",
                        lambda interval, percpu: [Times(60.0, 0.0, 0.0, 40.0, 0.0), Times(50.0, 0.0, 0.0, 50.0, 0.0)])
    spent = iter([Own(10.0, 1.0), Own(10.3, 1.0)])  # 0.3 s of our CPU time in a 0.3 s sample: one core
    monkeypatch.setattr(psutil.Process, "cpu_times", lambda self: next(spent))
    assert threads.busy_cores([0, 1], seconds=0.3) == pytest.approx(0.1)
