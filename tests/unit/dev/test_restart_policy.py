"""When the supervisor restarts a worker, and when it calls a crash loop (no processes here)."""

from __future__ import annotations

from agents.dev.supervisor import CrashHistory, RestartPolicy

POLICY = RestartPolicy(first_delay_s=0.5, max_delay_s=4.0, healthy_after_s=30.0,
                       max_crashes=3, window_s=60.0)


def test_more_than_max_crashes_within_the_window_is_a_crash_loop() -> None:
    history = CrashHistory(POLICY)
    assert [history.record(at=t, ran_s=1.0) for t in (0.0, 5.0, 10.0)] == [False] * 3
    assert history.record(at=15.0, ran_s=1.0)
    assert history.recent == 4


def test_crashes_older_than_the_window_are_forgotten() -> None:
    history = CrashHistory(POLICY)
    for t in (0.0, 5.0, 10.0):
        history.record(at=t, ran_s=1.0)
    assert not history.record(at=68.0, ran_s=1.0)  # 0.0 and 5.0 are out of the window
    assert history.recent == 2


def test_the_backoff_grows_and_a_healthy_run_resets_it() -> None:
    history = CrashHistory(POLICY)
    history.record(at=0.0, ran_s=1.0)
    assert history.backoff.delay == 0.5
    history.backoff.delay = 4.0  # as after several waits
    history.record(at=5.0, ran_s=29.0)
    assert history.backoff.delay == 4.0, "a short run must not reset the backoff"
    history.record(at=40.0, ran_s=30.0)
    assert history.backoff.delay == 0.5
