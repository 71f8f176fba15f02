"""The stand-in judge's simulated outage: the window by hand, over HTTP, and its plumbing from
``judge.local_server`` to the command line."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from ray_jobs.runtime.local_servers import server_arguments
from rewards.judge.config import LocalJudgeServerConfig
from rewards.judge.prompt import build_judge_messages
from rewards.judge.rubric import load_rubric
from rewards.stand_in.judge_server import JudgeServer, ServerSettings, _parse_args
from rewards.stand_in.outage import Outage


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_the_outage_starts_after_n_requests_and_lasts_its_seconds() -> None:
    clock = _Clock()
    outage = Outage(after=2, seconds=5.0, clock=clock)
    assert [outage.down(), outage.down()] == [False, False]  # requests 1 and 2 are served
    clock.t = 100.0
    assert outage.down()  # request 3 starts the outage, at t = 100
    clock.t = 104.9
    assert outage.down()
    clock.t = 105.0
    assert [outage.down() for _ in range(3)] == [False] * 3  # over, for good


@pytest.mark.parametrize(("after", "seconds"), [(None, 5.0), (0, 0.0)])
def test_no_outage_without_both_settings(after: int | None, seconds: float) -> None:
    outage = Outage(after=after, seconds=seconds, clock=_Clock())
    assert not any(outage.down() for _ in range(5))


def test_bad_outage_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="outage_after_requests and outage_s must be >= 0"):
        ServerSettings(outage_after_requests=-1, outage_s=1.0)


def _status(url: str, body: dict | None = None) -> int:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status
    except urllib.error.HTTPError as err:
        return err.code


def test_chat_requests_get_503_during_the_outage_and_models_keeps_answering() -> None:
    messages = build_judge_messages(load_rubric("seed000"), "A bakery in Portland.", "portlandbakes.com")
    body = {"model": "m", "messages": messages}
    with JudgeServer(settings=ServerSettings(outage_after_requests=1, outage_s=600.0)) as srv:
        chat = f"{srv.base_url}/chat/completions"
        assert [_status(chat, body), _status(chat, body), _status(chat, {"messages": []})] == [200, 503, 503]
        assert _status(f"{srv.base_url}/models") == 200
        assert srv.server.stats()["faults"] == {"outage": 2}


def test_local_server_outage_reaches_the_command_line() -> None:
    config = LocalJudgeServerConfig(outage_after_requests=40, outage_s=12.5)
    args = _parse_args(server_arguments(config))
    assert (args.outage_after_requests, args.outage_s) == (40, 12.5)
    default = _parse_args(server_arguments(LocalJudgeServerConfig()))
    assert (default.outage_after_requests, default.outage_s) == (None, 0.0)
