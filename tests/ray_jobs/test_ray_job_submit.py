"""The same training and evaluation commands run as Ray jobs on a head started by the test."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from run_procs import reap_session, session_processes

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """A one-node Ray head on 127.0.0.1 with token auth off (see docs/guides/cluster.md: Ray 2.60 auth), on free ports.

    Its temp dir is short: Ray's Unix socket paths must stay under ~107 characters.
    """
    temp_dir = tempfile.mkdtemp(prefix="rayh", dir="/tmp")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    dashboard = _free_port()
    port = _free_port()
    start = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--num-cpus=2",
        f"--port={port}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        "--disable-usage-stats",
        # its own ports for what defaults to fixed ones: another Ray on this machine (a test
        # running beside this one) may hold those, and the job agent would not start
        *(
            f"--{name}={_free_port()}"
            for name in (
                "dashboard-agent-listen-port",
                "dashboard-agent-grpc-port",
                "metrics-export-port",
                "runtime-env-agent-port",
                "ray-client-server-port",
            )
        ),
        f"--temp-dir={temp_dir}",
    ]
    head = subprocess.Popen(
        start, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )  # the head's daemons keep its session id
    assert head.wait(timeout=120) == 0
    try:
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        _stop_session(head.pid)  # this head only: `ray stop` would stop every Ray on the machine
        shutil.rmtree(temp_dir, ignore_errors=True)
        address_file = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if address_file.exists() and address_file.read_text().strip().endswith(f":{port}"):
            address_file.unlink()  # as `ray stop` does


def _submit(address: str, env: dict, *job: str) -> str:
    """``ray job submit`` and wait; a head whose job agent is not up yet is asked again (it says so)."""
    cmd = [
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        address,
        "--working-dir",
        str(REPO_ROOT),
        "--",
        "python",
        "-m",
        *job,
    ]
    deadline = time.monotonic() + 120
    while True:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if "No available agent to submit job" not in proc.stderr or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _stop_session(sid: int) -> None:
    """SIGTERM every process of the session, then SIGKILL what is left after 5 s (the head's
    daemons are the test's own; nothing of them is kept)."""
    for pid in session_processes(sid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while session_processes(sid) and time.monotonic() < deadline:
        time.sleep(0.5)
    reap_session(sid)


def test_training_then_evaluation_through_ray_job_submit(ray_head, tmp_path: Path, tiny_model_config) -> None:
    address, env = ray_head
    out, evaluation = tmp_path / "run", tmp_path / "eval"
    common = [f"model.cache_dir={tiny_model_config.cache_dir}", "wandb.mode=disabled"]
    stdout = _submit(address, env, "ray_jobs.train", "run.steps=2", f"run.output_dir={out}", *common)
    assert "run finished" in stdout
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1]

    stdout = _submit(
        address,
        env,
        "ray_jobs.evaluate",
        f"run.output_dir={evaluation}",
        "data.max_items=6",
        "statistics.resamples=200",
        f"conditions={{base: {{}}, trained: {{policy: {out / 'final'}}}}}",
        *common,
    )
    assert "evaluation finished" in stdout and "trained vs base" in stdout
    results = json.loads((evaluation / "results.json").read_text())
    assert list(results["conditions"]) == ["base", "trained"]
    assert results["conditions"]["trained"]["n"] + results["conditions"]["trained"]["n_missing"] == 6
