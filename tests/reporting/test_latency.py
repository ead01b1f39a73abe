"""Latency is a report extra bounded in time: a slow model gets fewer timed runs, not more time."""

from __future__ import annotations

from qaas_engine.reporting import latency


class _Clock:
    now = 0.0

    def perf_counter(self) -> float:
        return self.now


class _Session:
    """Each run takes ``seconds`` on the clock."""

    def __init__(self, clock: _Clock, seconds: float) -> None:
        self.clock, self.seconds, self.runs = clock, seconds, 0

    def run(self, names, feeds):
        self.clock.now += self.seconds
        self.runs += 1


def test_a_run_that_would_end_past_the_share_is_not_started(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(latency, "time", clock)
    slow = _Session(clock, 1.0)
    timed = latency._time(slow, {}, 2.5)
    # warm-up (ends at 1 s) and one timed run (2 s): a second would end at 3 s, past 2.5 s
    assert timed["runs"] == 1 and slow.runs == 2 and clock.now <= 2.5
    clock.now = 0.0
    fast = _Session(clock, 0.1)
    timed = latency._time(fast, {}, 2.0)
    assert timed["runs"] >= 10 and clock.now <= 2.0 + 1e-9


class _Jittery(_Session):
    """Runs alternate between ``seconds`` and three times it."""

    def run(self, names, feeds):
        self.clock.now += self.seconds * (3 if self.runs % 2 else 1)
        self.runs += 1


def test_steady_runs_stop_once_the_median_is_known(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(latency, "time", clock)
    timed = latency._time(_Session(clock, 0.001), {}, 10.0)
    assert timed["runs"] == latency.STEADY_MIN_RUNS  # not the 200 the budget allows
    clock.now = 0.0
    timed = latency._time(_Jittery(clock, 0.001), {}, 10.0)
    assert timed["runs"] == latency.MAX_RUNS  # a median this loose needs every run
