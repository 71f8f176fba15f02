"""What the driver does when a Ray actor dies, hangs or never starts.

The bookkeeping is plain (``RolloutCall``, ``FaultCounters``); ``ray_jobs/rl/actor_set.py``
applies it. Recovery rules:

* Every rollout call is a ``RolloutCall`` record: its batch, call index and
  prompts, the worker it went to (and that worker's *epoch*: how many restarts
  the driver had seen of it when the call was sent), and its two object refs
  (generation, then scoring). A call is finished only when its ScoreResult has
  been fetched, so a call whose worker or judge died is never lost: it is sent
  again for the same prompts, batch and call index (the group ids stay the
  same, so nothing is duplicated: the lost call produced nothing).
* Before resending, the driver waits until the actor answers again and compares
  its process id with the last one seen: a new process is a restart, counted once
  (``faults/rollout_restarts``, ``faults/judge_restarts``) however many calls were
  lost with the old one; a restarted rollout worker is sent the current weights.
  Every resend counts in ``faults/calls_resent``.
* A call resent more than ``max_resends`` times ends the run (a worker that dies
  every time it is restarted is not recovering).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field

import ray

from actors.messages import PromptItem
from ray_jobs.config.experiment import ACTOR_START_TIMEOUT_S


class StopRequested(Exception):
    """SIGINT/SIGTERM (or the run itself: ``cause``, one line, e.g. its judge budget, or a judge
    unreachable for judge.max_outage_s) asked the run to stop; raised after a checkpoint, or
    while the driver was waiting on a batch."""

    def __init__(self, cause: str | None = None) -> None:
        super().__init__(*([cause] if cause else []))
        self.cause = cause


class ActorStartError(RuntimeError):
    """An actor failed in its constructor; the message names the actor and the cause (one line)."""


class RunFaultError(RuntimeError):
    """A fault the run cannot recover from by itself (one line, naming what to do)."""


class LearnerDied(RunFaultError):
    """A learner rank died; the driver may restart the group from the newest checkpoint."""


@dataclass
class RolloutCall:
    """One rollout call in flight: generation on ``worker``, then scoring on the judge pool."""

    batch_index: int
    call_index: int
    prompts: list[PromptItem]
    worker: int
    epoch: int
    generated: ray.ObjectRef
    scored: ray.ObjectRef
    sent_at: float = field(default_factory=time.monotonic)
    resends: int = 0


@dataclass
class FaultCounters:
    """Cumulative fault counts of the run (they survive resume through the checkpoint)."""

    counts: Counter[str] = field(default_factory=Counter)

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def metrics(self) -> dict[str, float]:
        return {
            f"faults/{name}": float(self.counts[name])
            for name in ("rollout_restarts", "judge_restarts", "calls_resent")
        }

    def load(self, saved: dict[str, float]) -> None:
        self.counts = Counter({k.removeprefix("faults/"): int(v) for k, v in saved.items() if k.startswith("faults/")})


def failed(ref: ray.ObjectRef) -> BaseException | None:
    """The error a finished ref holds, or None if it holds a value (or is not finished)."""
    ready, _ = ray.wait([ref], timeout=0, fetch_local=False)
    if not ready:
        return None
    try:
        ray.get(ref)
    except Exception as exc:  # noqa: BLE001 - any failure of the task is the answer here
        return exc
    return None


def is_actor_fault(exc: BaseException) -> bool:
    """True for failures recovered by restarting and resending: the actor died or was
    unreachable, its object was lost, or a restarted worker asked for its weights."""
    from ray.exceptions import ActorUnavailableError, ObjectLostError, RayActorError, RayTaskError

    if isinstance(exc, (RayActorError, ActorUnavailableError, ObjectLostError)):
        return True
    return isinstance(exc, RayTaskError) and "WeightsMissing" in str(type(exc.cause).__name__)


def start_error(name: str, exc: BaseException) -> ActorStartError:
    """A one-line ``ActorStartError`` for actor ``name`` from Ray's creation-task failure."""
    text = str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line.split(":")[0] or "Exception" in line.split(":")[0]]
    cause = errors[-1] if errors else (lines[-1] if lines else type(exc).__name__)
    return ActorStartError(f"{name} failed to start: {cause[:300]}")


def check_started(actors: dict[str, ray.actor.ActorHandle], timeout_s: float) -> None:
    """Wait until every actor's constructor finished; ``ActorStartError`` for the first that failed."""
    refs = {name: actor.__ray_ready__.remote() for name, actor in actors.items()}
    deadline = time.monotonic() + timeout_s
    for name, ref in refs.items():
        try:
            ray.get(ref, timeout=max(1.0, deadline - time.monotonic()))
        except ray.exceptions.GetTimeoutError:
            raise ActorStartError(
                f"{name} did not start within {timeout_s:g} s (the cluster may lack the resources it asks for)"
            ) from None
        except Exception as exc:  # noqa: BLE001 - Ray wraps the constructor's exception
            raise start_error(name, exc) from None


def _pid(_actor: object) -> int:
    """Run inside an actor (``__ray_call__``): its process id, new after every restart."""
    return os.getpid()


class ActorProcesses:
    """The process behind each restartable actor, to tell a restart from a lost call.

    Invariant: ``_pids[name]`` is the process id the actor last answered from.
    """

    def __init__(
        self,
        actors: dict[str, ray.actor.ActorHandle],
        max_restarts: int,
        start_timeout_s: float = ACTOR_START_TIMEOUT_S,
    ) -> None:
        self._actors, self._max_restarts, self._start_timeout_s = actors, max_restarts, start_timeout_s
        self._pids = dict(zip(actors, ray.get([a.__ray_call__.remote(_pid) for a in actors.values()])))

    def restarted(self, name: str) -> bool:
        """Wait until actor ``name`` answers; True if it is another process than last seen (Ray
        restarted it). While Ray restarts it, calls fail at once with ``ActorUnavailableError``:
        ask again, up to ``start_timeout_s`` (``run.actor_start_timeout_s``). Dead for good: ``RunFaultError``."""
        from ray.exceptions import ActorUnavailableError

        deadline = time.monotonic() + self._start_timeout_s
        while True:
            try:
                call = self._actors[name].__ray_call__.remote(_pid)
                pid = ray.get(call, timeout=max(1.0, deadline - time.monotonic()))
                break
            except ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise RunFaultError(
                        f"{name} did not come back within {self._start_timeout_s:g} s (run.actor_start_timeout_s)"
                    ) from None
                time.sleep(0.25)
            except Exception as exc:  # noqa: BLE001 - dead for good, or not back in time
                raise RunFaultError(
                    f"{name} died and did not come back ({type(exc).__name__}; "
                    f"pipeline.max_actor_restarts={self._max_restarts}); re-run "
                    "the same command to resume from the newest checkpoint"
                ) from None
        changed = self._pids.get(name) not in (None, pid)
        self._pids[name] = pid
        return changed
