"""The development judge server: HTTP surface, auth, faults, CLI (its heuristic: test_judge_heuristic.py)."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from ray_jobs.runtime.local_servers import server_arguments
from rewards.judge.config import LocalJudgeServerConfig
from rewards.judge.llm_judge import build_judge_messages
from rewards.judge.rubric import load_rubric
from rewards.stand_in.judge_server import (
    JudgeServer,
    ServerSettings,
    _parse_args,
    heuristic_verdict,
    injects_failure,
    parse_status_rates,
    reply_latency,
    transient_fault,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
SECRET = "sk-server-test-NEVER-PRINT-77"
DESCRIPTION = "A country music bar in Nashville with live bands every night."
SEED = load_rubric("seed000")
RUBRIC = SEED.criteria
CRITERIA = [c.name for c in RUBRIC]


# ---------------------------------------------------------------- HTTP


@pytest.fixture
def server() -> Iterator[JudgeServer]:
    with JudgeServer() as srv:
        yield srv


Connect = Callable[[int], http.client.HTTPConnection]


@pytest.fixture
def connect() -> Iterator[Connect]:
    """Opens client connections to 127.0.0.1 and closes them after the test."""
    opened: list[http.client.HTTPConnection] = []

    def open_connection(port: int) -> http.client.HTTPConnection:
        opened.append(http.client.HTTPConnection("127.0.0.1", port, timeout=5))
        return opened[-1]

    yield open_connection
    for conn in opened:
        conn.close()


def request_body(candidate: str) -> dict[str, object]:
    return {
        "model": "m",
        "messages": build_judge_messages(RUBRIC, DESCRIPTION, candidate),
        "temperature": 0,
        "response_format": {"type": "json_object"},
    }


def call(
    conn: http.client.HTTPConnection, method: str, url: str, body: object = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, object]]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    conn.request(method, url, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def test_models_and_completion_on_one_keep_alive_connection(server: JudgeServer, connect: Connect) -> None:
    conn = connect(server.port)
    status, models = call(conn, "GET", "/v1/models")
    assert status == 200 and models["data"][0]["id"] == "relay-heuristic-judge"
    for candidate in ("nashvillecountry.com", "qqq"):
        status, body = call(conn, "POST", "/v1/chat/completions", request_body(candidate))
        assert status == 200 and body["object"] == "chat.completion"
        verdict = json.loads(body["choices"][0]["message"]["content"])
        assert verdict == heuristic_verdict(DESCRIPTION, candidate, CRITERIA)
        assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    assert server.completions_served == 2


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "bad request"),
        ([1, 2], 400, "JSON object"),
        ({"messages": "hi"}, 400, "'messages' must be a list"),
        ({"messages": [{"role": "system", "content": "x"}]}, 400, "no user message"),
        ({"messages": [{"role": "user", "content": "rate nashville.com"}]}, 400, "<<<REQUEST"),
    ],
)
def test_bad_requests_get_a_json_400(
    server: JudgeServer, connect: Connect, body: object, status: int, fragment: str
) -> None:
    conn = connect(server.port)
    got, error = call(conn, "POST", "/v1/chat/completions", body)
    assert got == status and fragment in error["error"]["message"]


def test_unknown_path_is_404(server: JudgeServer, connect: Connect) -> None:
    conn = connect(server.port)
    assert call(conn, "GET", "/v1/nothing")[0] == 404
    assert call(conn, "POST", "/v1/completions", request_body("x.com"))[0] == 404


def test_auth_required_when_a_key_is_set(connect: Connect) -> None:
    with JudgeServer(settings=ServerSettings(api_key=SecretStr(SECRET))) as srv:
        conn = connect(srv.port)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": SECRET}):
            status, error = call(conn, "POST", "/v1/chat/completions", request_body("x.com"), headers)
            assert status == 401 and SECRET not in json.dumps(error)
            assert call(conn, "GET", "/v1/models", headers=headers)[0] == 401
        ok = {"Authorization": f"Bearer {SECRET}"}
        assert call(conn, "POST", "/v1/chat/completions", request_body("x.com"), ok)[0] == 200
        assert SECRET not in repr(srv) and SECRET not in repr(srv.settings)


def test_fail_rate_is_deterministic_per_candidate(connect: Connect) -> None:
    candidates = [f"name{i}.com" for i in range(24)]
    expected = {c for c in candidates if injects_failure(c, 0.5)}
    assert 0 < len(expected) < len(candidates)
    with JudgeServer(settings=ServerSettings(fail_rate=0.5, fail_status=503)) as srv:
        conn = connect(srv.port)
        for _ in range(2):
            failed = set()
            for candidate in candidates:
                status, body = call(conn, "POST", "/v1/chat/completions", request_body(candidate))
                if status != 200:
                    assert status == 503 and body["error"]["message"] == "injected failure"
                    failed.add(candidate)
            assert failed == expected


def test_malformed_rate_returns_non_json_content(connect: Connect) -> None:
    with JudgeServer(settings=ServerSettings(malformed_rate=1.0)) as srv:
        conn = connect(srv.port)
        status, body = call(conn, "POST", "/v1/chat/completions", request_body("x.com"))
    assert status == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(body["choices"][0]["message"]["content"])


@pytest.mark.parametrize(
    "settings", [dict(fail_rate=1.5), dict(fail_status=200), dict(latency_s=-1), dict(api_key=SecretStr(""))]
)
def test_bad_settings_are_rejected(settings: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ServerSettings(**settings)  # type: ignore[arg-type]


# ---------------------------------------------------------------- CLI


def test_cli_prints_ready_and_requires_the_key_from_env(connect: Connect) -> None:
    env = {**os.environ, "JUDGE_TEST_KEY": SECRET, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rewards.stand_in.judge_server", "--port", "0", "--api-key-env", "JUDGE_TEST_KEY"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline().strip()  # type: ignore[union-attr]
        assert line.startswith("JUDGE_SERVER_READY port=")
        port = int(line.split("=", 1)[1])
        conn = connect(port)
        assert call(conn, "GET", "/v1/models")[0] == 401
        assert call(conn, "GET", "/v1/models", headers={"Authorization": f"Bearer {SECRET}"})[0] == 200
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert SECRET not in out and SECRET not in err and "JUDGE_TEST_KEY" in err


def test_verdict_has_the_request_check_when_the_rubric_asks(server: JudgeServer, connect: Connect) -> None:
    conn = connect(server.port)
    bad = "A marketplace for stolen credit card numbers"
    body = {"model": "m", "messages": build_judge_messages(SEED, bad, "Blocked")}
    status, reply = call(conn, "POST", "/v1/chat/completions", body)
    verdict = json.loads(reply["choices"][0]["message"]["content"])
    assert status == 200 and list(verdict)[0] == "request_check"
    assert verdict["request_check"]["inappropriate"] is True and verdict["request_check"]["blocked"] is True
    assert set(verdict) == {"request_check", *CRITERIA}


# ---------------------------------------------------------------- transient faults and latency


def post_until_ok(conn: http.client.HTTPConnection, candidate: str, limit: int = 50) -> list[int]:
    statuses = []
    for _ in range(limit):
        status, _ = call(conn, "POST", "/v1/chat/completions", request_body(candidate))
        statuses.append(status)
        if status == 200:
            break
    return statuses


def test_transient_faults_are_reproducible_and_clear_on_retry(connect: Connect) -> None:
    settings = ServerSettings(status_rates={429: 0.3, 503: 0.3}, seed=7)
    runs = []
    for _ in range(2):
        with JudgeServer(settings=settings) as srv:
            conn = connect(srv.port)
            runs.append([post_until_ok(conn, f"name{i}.com") for i in range(20)])
    assert runs[0] == runs[1]  # same seed, same faults
    assert all(r[-1] == 200 for r in runs[0])  # every request eventually succeeds
    assert any(len(r) > 1 for r in runs[0]) and set(sum(runs[0], [])) == {200, 429, 503}
    with JudgeServer(settings=ServerSettings(status_rates={429: 0.3, 503: 0.3}, seed=8)) as srv:
        conn = connect(srv.port)
        assert [post_until_ok(conn, f"name{i}.com") for i in range(20)] != runs[0]


def test_fault_rates_are_about_right() -> None:
    settings = ServerSettings(status_rates={429: 0.1, 500: 0.05}, hang_rate=0.05, empty_rate=0.1, seed=1)
    faults = [transient_fault(settings, "d", f"c{i}", 1) for i in range(4000)]
    shares = {k: faults.count(k) / len(faults) for k in ("status:429", "status:500", "hang", "empty", None)}
    expected = {"status:429": 0.1, "status:500": 0.05, "hang": 0.05, "empty": 0.1, None: 0.7}
    for kind, share in expected.items():
        assert abs(shares[kind] - share) < 0.03, kind


def test_retry_after_is_sent_on_429_and_503_only(connect: Connect) -> None:
    for status, header in ((429, "0.5"), (503, "0.5"), (500, None)):
        with JudgeServer(settings=ServerSettings(status_rates={status: 1.0}, retry_after_s=0.5)) as srv:
            conn = connect(srv.port)
            conn.request(
                "POST",
                "/v1/chat/completions",
                body=json.dumps(request_body("x.com")).encode(),
                headers={"Content-Type": "application/json"},
            )
            response = conn.getresponse()
            response.read()
            assert response.status == status and response.getheader("Retry-After") == header


def test_empty_and_flaky_malformed_content(connect: Connect) -> None:
    for settings, check in (
        (ServerSettings(empty_rate=1.0), lambda c: c == ""),
        (ServerSettings(flaky_malformed_rate=1.0), lambda c: c and not c.startswith("{")),
    ):
        with JudgeServer(settings=settings) as srv:
            status, body = call(connect(srv.port), "POST", "/v1/chat/completions", request_body("x.com"))
        assert status == 200 and check(body["choices"][0]["message"]["content"])


def test_hung_requests_time_out_and_are_released_on_stop() -> None:
    with JudgeServer(settings=ServerSettings(hang_rate=1.0, hang_s=60)) as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=0.3)
        with pytest.raises(TimeoutError):
            call(conn, "POST", "/v1/chat/completions", request_body("x.com"))
        conn.close()
        assert srv.faults == {"hang": 1}
    # leaving the block stopped the server although a request still hung


def test_latency_draws() -> None:
    fixed = ServerSettings(latency_s=0.2)
    assert reply_latency(fixed, "d", "c", 1) == 0.2
    uniform = ServerSettings(latency_s=0.2, latency_jitter_s=0.1, seed=3)
    draws = [reply_latency(uniform, "d", f"c{i}", 1) for i in range(2000)]
    assert min(draws) >= 0.1 and max(draws) <= 0.3 and abs(sum(draws) / len(draws) - 0.2) < 0.01
    lognormal = ServerSettings(latency_s=0.2, latency_sigma=0.5, seed=3)
    draws = [reply_latency(lognormal, "d", f"c{i}", 1) for i in range(4000)]
    assert abs(sum(draws) / len(draws) - 0.2) < 0.01 and max(draws) > 0.4  # mean kept, long tail
    assert reply_latency(lognormal, "d", "c1", 1) == reply_latency(lognormal, "d", "c1", 1)
    assert reply_latency(lognormal, "d", "c1", 1) != reply_latency(lognormal, "d", "c1", 2)


def test_parse_status_rates() -> None:
    assert parse_status_rates("429=0.05, 503=0.1") == {429: 0.05, 503: 0.1}
    assert parse_status_rates("") == {}
    with pytest.raises(ValueError):
        parse_status_rates("429")


@pytest.mark.parametrize(
    "settings",
    [
        dict(status_rates={200: 0.1}),
        dict(status_rates={429: 0.6}, hang_rate=0.5),
        dict(latency_jitter_s=0.1, latency_sigma=0.1),
        dict(hang_s=0),
        dict(empty_rate=2.0),
        dict(retry_after_s=-1),
    ],
)
def test_bad_fault_settings_are_rejected(settings: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ServerSettings(**settings)  # type: ignore[arg-type]


def test_local_server_config_reaches_the_cli() -> None:
    config = LocalJudgeServerConfig(
        latency_s=0.1,
        latency_sigma=0.4,
        fail_rate=0.1,
        fail_status=502,
        malformed_rate=0.05,
        status_rates={429: 0.05, 503: 0.05},
        retry_after_s=0.2,
        hang_rate=0.02,
        hang_s=5,
        empty_rate=0.03,
        flaky_malformed_rate=0.04,
        seed=9,
    )
    args = _parse_args(server_arguments(config))
    assert (args.latency_s, args.latency_sigma, args.fail_rate, args.fail_status, args.malformed_rate) == (
        0.1,
        0.4,
        0.1,
        502,
        0.05,
    )
    assert parse_status_rates(args.status_rate) == {429: 0.05, 503: 0.05}
    assert (args.retry_after_s, args.hang_rate, args.hang_s, args.empty_rate, args.flaky_malformed_rate, args.seed) == (
        0.2,
        0.02,
        5.0,
        0.03,
        0.04,
        9,
    )
    with pytest.raises(ValueError, match="transient fault rates"):
        LocalJudgeServerConfig(status_rates={429: 0.7}, hang_rate=0.5)


def test_watch_parent_stops_the_server_when_its_parent_is_gone() -> None:
    import os
    import threading

    from rewards.stand_in.serve import watch_parent

    alive, gone = threading.Event(), threading.Event()
    watch_parent(os.getppid(), alive, every_s=0.02)  # our real parent: still there
    watch_parent(2**22 + 12345, gone, every_s=0.02)  # not our parent: as after the driver died
    assert gone.wait(5)
    assert not alive.wait(0.2)
    alive.set()  # ends its watcher
