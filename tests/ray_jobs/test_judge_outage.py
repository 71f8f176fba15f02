"""The driver's side of a judge outage (``OutageGuard``) on scripted pool answers and a fake clock."""

from __future__ import annotations

import logging

import pytest

from ray_jobs.rl.judge_outage import OutageGuard, judge_outage_cause
from ray_jobs.runtime.faults import StopRequested
from rewards.client.outage import JudgeOutage, JudgeOutageError


class _Pool:
    """What the judge pool answers, and when the driver asked."""

    def __init__(self) -> None:
        self.state = JudgeOutage()
        self.asked = 0
        self.fails = False

    def __call__(self) -> JudgeOutage:
        self.asked += 1
        if self.fails:
            raise RuntimeError("pool restarting")
        return self.state


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def guard(max_outage_s: float = 100.0) -> tuple[OutageGuard, _Pool, _Clock]:
    pool, clock = _Pool(), _Clock()
    return OutageGuard(pool, max_outage_s, poll_s=1.0, clock=clock), pool, clock


def test_the_pool_is_asked_at_most_once_per_poll_interval() -> None:
    g, pool, clock = guard()
    assert not g.down() and pool.asked == 1
    pool.state = JudgeOutage(down=True, count=1)
    clock.t = 0.5
    assert not g.down() and pool.asked == 1  # the answer of t=0 still holds
    clock.t = 1.0
    assert g.down() and pool.asked == 2
    pool.fails = True
    clock.t = 2.0
    assert g.down() and pool.asked == 3  # a pool that cannot answer leaves the last answer


def test_step_metrics_add_the_pools_outage_seconds_across_a_restart(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    g, pool, clock = guard()
    assert g.step_metrics() == {"judge/outage_s": 0.0, "judge/outage_total_s": 0.0, "judge/outages": 0.0}
    clock.t, pool.state = 1.0, JudgeOutage(down=True, current_s=5.0, total_s=5.0, count=1)
    assert g.down()
    pool.state = JudgeOutage(down=False, total_s=12.0, count=1, last_s=12.0)  # step metrics always ask
    assert g.step_metrics() == {"judge/outage_s": 12.0, "judge/outage_total_s": 12.0, "judge/outages": 1.0}
    pool.state = JudgeOutage(down=False, total_s=3.0, count=1, last_s=3.0)  # a new pool: 3 s of its own
    assert g.step_metrics() == {"judge/outage_s": 3.0, "judge/outage_total_s": 15.0, "judge/outages": 2.0}
    assert g.step_metrics() == {"judge/outage_s": 0.0, "judge/outage_total_s": 15.0, "judge/outages": 2.0}
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("judge unreachable (no endpoint answers): no new batches are launched")
    assert messages[1:] == [
        "judge answers again after 12.0 s of outage: launching again",
        "judge answers again after 3.0 s of outage: launching again",  # began and ended between two looks
    ]


def test_a_long_outage_gets_one_checkpoint_then_stops_the_run_with_its_cause() -> None:
    g, pool, clock = guard(max_outage_s=100.0)
    assert g.checkpoint_after_s == 50.0  # min(120 s, max_outage_s / 2)
    checkpoints: list[float] = []
    hold = g.watch(lambda: False, lambda: checkpoints.append(clock.t))
    for t, stalled in [(1.0, 10.0), (2.0, 49.0), (3.0, 50.0), (4.0, 80.0)]:
        clock.t, pool.state = t, JudgeOutage(down=True, current_s=stalled, total_s=stalled, count=1, stalled_s=stalled)
        assert hold() is False
    assert checkpoints == [3.0]  # once per outage, when it had lasted 50 s
    clock.t, pool.state = 5.0, JudgeOutage(down=True, current_s=7.0, total_s=100.0, count=3, stalled_s=100.0)
    with pytest.raises(StopRequested) as stop:
        hold()
    assert str(stop.value).startswith("judge unreachable for 100 s (judge.max_outage_s=100)")


def test_a_signal_stops_first_and_an_up_judge_never_checkpoints() -> None:
    g, pool, clock = guard()
    checkpoints: list[int] = []
    assert g.watch(lambda: True, lambda: checkpoints.append(1))() is True
    pool.state = JudgeOutage(down=False, total_s=500.0, count=3, last_s=200.0)
    assert g.watch(lambda: False, lambda: checkpoints.append(1))() is False
    assert checkpoints == []


def test_the_cause_of_a_judge_outage_error_raised_in_the_pool() -> None:
    class Wrapped(JudgeOutageError):  # as Ray wraps an actor task's exception: the original is ``cause``
        def __init__(self, cause: BaseException) -> None:
            super().__init__("ray.exceptions.RayTaskError(JudgeOutageError): ...\nTraceback ...")
            self.cause = cause

    error = JudgeOutageError("judge unreachable for 1800 s (judge.max_outage_s=1800); ...")
    assert judge_outage_cause(error) == str(error)
    assert judge_outage_cause(Wrapped(error)) == str(error)
    assert judge_outage_cause(RuntimeError("other")) is None


def test_a_stop_prints_its_cause_before_the_resume_line(capsys: pytest.CaptureFixture[str]) -> None:
    from types import SimpleNamespace

    from ray_jobs.runtime.control import command_exit_code

    cfg = SimpleNamespace(run=SimpleNamespace(directory="runs/x"))

    def stop(cause: str):
        def job(_cfg: object) -> None:
            raise StopRequested(cause)

        return job

    assert command_exit_code(lambda: cfg, stop("judge unreachable for 1800 s (judge.max_outage_s=1800)"), ()) == 143
    assert command_exit_code(lambda: cfg, stop(""), ()) == 143  # a signal: no cause
    assert capsys.readouterr().out.splitlines() == [
        "stopped: judge unreachable for 1800 s (judge.max_outage_s=1800)",
        "stopped: checkpoint written; re-run the same command to resume (runs/x)",
        "stopped: checkpoint written; re-run the same command to resume (runs/x)",
    ]
