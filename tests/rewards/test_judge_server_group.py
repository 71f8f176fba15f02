"""The stand-in judge's group requests and its known biases (position, length)."""

from __future__ import annotations

import http.client
import json

import pytest

from ray_jobs.runtime.local_servers import server_arguments
from rewards.judge.config import LocalJudgeServerConfig
from rewards.judge.group import group_system_message, group_user_message, parse_group_reply
from rewards.judge.llm_judge import build_judge_messages
from rewards.judge.rubric import Verdict, load_rubric
from rewards.stand_in.judge_heuristic import (
    heuristic_verdict,
    length_points,
    position_points,
    with_bias,
)
from rewards.stand_in.judge_server import JudgeServer, ServerSettings, _parse_args, injects_malformed

SEED = load_rubric("seed000")
CRITERIA = [c.name for c in SEED.criteria]
DESCRIPTION = "A country music bar in Nashville with live bands every night."
NAMES = ["honkytonk.com", "nashvillebar.com", "livebands.io", "countrynights.com"]


# ---------------------------------------------------------------- the biases (pure)


@pytest.mark.parametrize(
    ("chars", "bias", "points"), [(0, 2.0, 0.0), (50, 2.0, 1.0), (100, 2.0, 2.0), (150, 2.0, 2.0), (25, -4.0, -1.0)]
)
def test_length_points(chars: int, bias: float, points: float) -> None:
    assert length_points("x" * chars, bias) == pytest.approx(points)  # bias * min(1, chars / 100)


@pytest.mark.parametrize(
    ("position", "shown_of", "points"), [(0, 4, 3.0), (1, 4, 2.0), (2, 4, 1.0), (3, 4, 0.0), (0, 1, 0.0)]
)
def test_position_points(position: int, shown_of: int, points: float) -> None:
    assert position_points(position, shown_of, 3.0) == pytest.approx(points)  # 3 * (n - 1 - p) / (n - 1)


def test_with_bias_clips_and_leaves_the_request_check_alone() -> None:
    verdict = {
        "request_check": {"reason": "r", "inappropriate": False, "blocked": False},
        "relevance": {"reason": "a", "score": 9.5},
        "length": {"reason": "b", "score": 4.0},
    }
    assert with_bias(verdict, 1.0) == {
        "request_check": verdict["request_check"],
        "relevance": {"reason": "a", "score": 10.0},
        "length": {"reason": "b", "score": 5.0},
    }
    assert with_bias(verdict, -5.0)["length"]["score"] == 0.0


# ---------------------------------------------------------------- HTTP


def ask(server: JudgeServer, messages: list[dict[str, str]]) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        body = json.dumps({"model": "m", "messages": messages, "temperature": 0}).encode()
        conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        reply = json.loads(response.read())
    finally:
        conn.close()
    content = reply["choices"][0]["message"]["content"] if response.status == 200 else ""
    return response.status, content


def group_messages(candidates: list[str]) -> list[dict[str, str]]:
    labels = [chr(ord("A") + i) for i in range(len(candidates))]
    return [
        {"role": "system", "content": group_system_message(SEED, labels)},
        {"role": "user", "content": group_user_message(DESCRIPTION, candidates)},
    ]


def test_a_group_request_gets_one_heuristic_verdict_per_label() -> None:
    with JudgeServer() as srv:
        status, content = ask(srv, group_messages(NAMES))
        assert srv.server.stats()["requests"] == 1
    assert status == 200
    assert json.loads(content) == {
        label: heuristic_verdict(DESCRIPTION, name, CRITERIA, True) for label, name in zip("ABCD", NAMES)
    }
    parsed = parse_group_reply(content, SEED, list("ABCD"))
    assert all(isinstance(v, Verdict) for v in parsed.values())


def test_position_and_length_biases_in_a_group_request() -> None:
    with JudgeServer(settings=ServerSettings(position_bias=3.0, length_bias=1.0)) as srv:
        _, content = ask(srv, group_messages(NAMES))
    answer = json.loads(content)
    for position, (label, name) in enumerate(zip("ABCD", NAMES)):
        plain = heuristic_verdict(DESCRIPTION, name, CRITERIA, True)
        points = (3 - position) * 1.0 + len(name) / 100  # position: 3, 2, 1, 0; length: chars / 100
        for criterion in CRITERIA:
            expected = min(10.0, max(0.0, plain[criterion]["score"] + points))
            assert answer[label][criterion]["score"] == pytest.approx(expected, abs=0.006)
        assert answer[label]["request_check"] == plain["request_check"]


def test_the_length_bias_holds_pointwise_and_the_position_bias_does_not() -> None:
    name = "nashvillebarwithlivebandseverynight.com"  # 39 characters: + 0.39 * 2
    with JudgeServer(settings=ServerSettings(position_bias=3.0, length_bias=2.0)) as srv:
        _, content = ask(srv, build_judge_messages(SEED, DESCRIPTION, name))
    plain = heuristic_verdict(DESCRIPTION, name, CRITERIA, True)
    verdict = json.loads(content)
    for criterion in CRITERIA:
        assert verdict[criterion]["score"] == pytest.approx(min(10.0, plain[criterion]["score"] + 0.78), abs=0.006)


def test_persistent_faults_in_a_group_request() -> None:
    bad = next(n for n in (f"bar{i}.com" for i in range(100)) if injects_malformed(n, 0.5))
    good = next(n for n in (f"bar{i}.com" for i in range(100)) if not injects_malformed(n, 0.5))
    with JudgeServer(settings=ServerSettings(malformed_rate=0.5)) as srv:
        _, content = ask(srv, group_messages([good, bad]))
    parsed = parse_group_reply(content, SEED, ["A", "B"])
    assert isinstance(parsed["A"], Verdict)
    assert getattr(parsed["B"], "cause", None) == "judge_group_partial"  # only the malformed one's label
    with JudgeServer(settings=ServerSettings(fail_rate=1.0, fail_status=502)) as srv:
        status, _ = ask(srv, group_messages([good, bad]))
    assert status == 502


def test_the_biases_reach_the_command_line() -> None:
    args = _parse_args(server_arguments(LocalJudgeServerConfig(position_bias=1.5, length_bias=-2.0)))
    assert (args.position_bias, args.length_bias) == (1.5, -2.0)
    assert _parse_args([]).position_bias == 0.0 and _parse_args([]).length_bias == 0.0
