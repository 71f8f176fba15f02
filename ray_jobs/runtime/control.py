"""The run's control: graceful stop on signals, and checkpoints of the driver and the learner.

``RunControl`` is what the training loop asks "should I stop?" and tells "step
N is done". It writes a checkpoint every ``run.checkpoint_every`` steps, at the
end, and when stopping; each one holds the learner's state, the policy, and the
driver's ``DriverState`` (``ray_jobs/runtime/lifecycle.py`` has the layout).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from actors.messages import PromptItem
from ray_jobs.config.experiment import RunConfig
from ray_jobs.data.prompts import PromptSource
from ray_jobs.runtime.faults import RolloutCall, RunFaultError, StopRequested
from ray_jobs.runtime.lifecycle import Checkpoint, DriverState, directory_bytes, write_checkpoint
from rewards.trl_terms import TermContractError

log = logging.getLogger("relay.train")


class GracefulStop:
    """SIGINT/SIGTERM handlers for the life of a run.

    The first signal sets ``requested`` (the loop stops launching rollouts, writes
    a checkpoint at the last completed step and exits); a second one raises
    ``KeyboardInterrupt`` at once. Installed only in the main thread (signals
    are delivered there); elsewhere it is inert. ``install`` again after
    ``ray.init``, which puts its own SIGTERM handler in place; ``restore`` puts
    the handlers from before the first ``install`` back. ``request(cause)`` is the run asking
    itself to stop (e.g. at its judge budget): the same graceful stop, with a one-line ``cause``.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self.cause: str | None = None
        self._previous: dict[int, Any] = {}
        self.install()

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous = signal.signal(signum, self._handle)
                self._previous.setdefault(signum, previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}")
        self.requested, self.signum = True, signum
        log.warning(
            "%s: stopping after a checkpoint at the last completed step (send it again to stop at once)",
            signal.Signals(signum).name,
        )

    def request(self, cause: str) -> None:
        """Stop after a checkpoint of the last completed step, for ``cause`` (printed on exit)."""
        if not self.requested:
            self.requested, self.cause = True, cause
            log.warning("stopping after a checkpoint at the last completed step: %s", cause)

    def __call__(self) -> bool:
        return self.requested

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


class RunControl:
    """Checkpoints and stop requests for one training run.

    Invariant: a checkpoint of step N is taken when the learner has trained
    exactly N batches and every batch launched but not trained is in
    ``inflight`` (its calls' prompts are saved, not its samples). ``settle(N)``
    runs first: what must be on disk before checkpoint N (the evaluations of
    older policies, ``ray_jobs/rl/train_eval.py``).
    """

    def __init__(
        self,
        run: RunConfig,
        run_dir: Path,
        config: dict,
        stop: GracefulStop,
        wandb_id: str | None,
        tokenizer: Any,
        settle: Callable[[int], None] = lambda steps_done: None,
        counters: Callable[[], dict[str, float]] = dict,
    ) -> None:
        self.tokenizer = tokenizer  # saved beside the policy, so that a checkpoint serves as it is
        self.run = run
        self.run_dir = run_dir
        self.config = config
        self.stop = stop
        self.wandb_id = wandb_id
        self.settle = settle
        self.counters = counters  # saved beside the fault counters (e.g. the run's spending)
        self.newest: Checkpoint | None = None

    def due(self, steps_done: int) -> bool:
        every = self.run.checkpoint_every
        return steps_done == self.run.steps or bool(every and steps_done % every == 0)

    def checkpoint(
        self, stages, recorder, steps_done: int, inflight: dict[int, list[RolloutCall]], source: PromptSource
    ) -> Checkpoint:
        """Write checkpoint ``steps_done`` (unless the newest already is it) and log its cost."""
        if self.newest is not None and self.newest.step == steps_done:
            return self.newest
        self.settle(steps_done)
        recorder.sync()  # every line of the steps before it is on disk first
        state = DriverState(
            next_step=steps_done,
            source=source.state_dict(),
            inflight_rows={b: [p.row for c in calls for p in c.prompts] for b, calls in sorted(inflight.items())},
            rollout_rng=stages.rollout_rng_states(),
            counters={**stages.faults.metrics(), **self.counters()},
            wandb_id=self.wandb_id,
        )

        def fill(tmp: Path) -> None:
            stages.save_checkpoint(str(tmp.resolve()))
            self.tokenizer.save_pretrained(tmp / "policy")

        self.newest, seconds = write_checkpoint(
            self.run_dir, steps_done, self.config, state, fill, self.run.keep_checkpoints
        )
        log.info(
            "checkpoint step-%d written in %.2f s (%.1f MB)",
            steps_done,
            seconds,
            directory_bytes(self.newest.path) / 1e6,
        )
        return self.newest


def relaunch_inflight(stages, state: DriverState, items: list[PromptItem]) -> dict[int, list[RolloutCall]]:
    """The batches a checkpoint had in flight, generated again for the same prompts
    (in the same order, so they get the same group ids), on the checkpoint's weights."""
    by_row = {item.row: item for item in items}
    return {b: stages.launch_batch(b, [by_row[r] for r in rows]) for b, rows in sorted(state.inflight_rows.items())}


def command_exit_code(
    load: Callable[[], Any], job: Callable[[Any], object], bad_input: tuple[type[BaseException], ...]
) -> int:
    """Load a job's config and run it, as a command: bad input is ``error: ...`` and exit code 2,
    a fault the run cannot recover from (or a reward function breaking its contract) exit code 1,
    a graceful stop 143 (checkpoint written; its cause first when it was not a signal),
    a second signal 130; each with one line saying how to go on."""
    cfg = None
    try:
        cfg = load()
        job(cfg)
    except bad_input as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunFaultError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except TermContractError as exc:  # raised in the judge pool: Ray's wrapper keeps the one-line cause
        print(f"error: {getattr(exc, 'cause', exc)}", file=sys.stderr)
        return 1
    except StopRequested as exc:
        where = f" ({cfg.run.directory})" if cfg is not None else ""
        if exc.cause:
            print(f"stopped: {exc.cause}", flush=True)
        print(f"stopped: checkpoint written; re-run the same command to resume{where}", flush=True)
        return 143
    except KeyboardInterrupt:
        where = f" ({cfg.run.directory})" if cfg is not None else ""
        print(
            f"stopped at once; re-run the same command to resume from the newest checkpoint{where}",
            file=sys.stderr,
            flush=True,
        )
        return 130
    return 0
