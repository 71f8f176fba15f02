"""The generic stand-in chat server and the stand-in GEO engine built on it."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from pydantic import SecretStr

from rewards.stand_in.geo_engine import MAX_WORDS, NO_ANSWER, answer, parse_engine_request
from rewards.stand_in.server import BadRequest, StandInServer, StandInSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
SECRET = "sk-stand-in-NEVER-PRINT-55"


def echo(messages: list[dict], model: str) -> str:
    if messages[-1]["content"] == "bad":
        raise BadRequest("I do not answer 'bad'")
    if messages[-1]["content"] == "crash":
        raise ZeroDivisionError("boom")
    return f"{model}: {messages[-1]['content']}"


def call(port: int, method: str, path: str, body: object = None, key: str | None = None) -> tuple[int, dict, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=data, headers=headers)
    response = conn.getresponse()
    result = response.status, json.loads(response.read()), dict(response.getheaders())
    conn.close()
    return result


def chat(port: int, content: str, key: str | None = None) -> tuple[int, dict, dict]:
    return call(
        port, "POST", "/v1/chat/completions", {"model": "m1", "messages": [{"role": "user", "content": content}]}, key
    )


def test_routes_auth_and_stats() -> None:
    with StandInServer(echo, settings=StandInSettings(model="stand", api_key=SecretStr(SECRET))) as srv:
        assert call(srv.port, "GET", "/v1/models")[0] == 401
        assert chat(srv.port, "hi", key="wrong")[0] == 401
        status, body, _ = call(srv.port, "GET", "/v1/models", key=SECRET)
        assert status == 200 and body["data"][0]["id"] == "stand"
        status, body, _ = chat(srv.port, "hi", key=SECRET)
        assert status == 200 and body["choices"][0]["message"]["content"] == "m1: hi"
        assert chat(srv.port, "bad", key=SECRET)[0] == 400
        status, body, _ = chat(srv.port, "crash", key=SECRET)
        assert status == 500 and body["error"]["message"] == "respond failed: ZeroDivisionError"
        assert call(srv.port, "POST", "/v1/chat/completions", {"messages": []}, key=SECRET)[0] == 400
        assert call(srv.port, "GET", "/nowhere", key=SECRET)[0] == 404
        status, stats, _ = call(srv.port, "GET", "/stats", key=SECRET)
    # 401s and the unparseable body are not counted; hi, bad and crash are
    assert status == 200 and stats == {"requests": 3, "peak_inflight": 1, "faults": {}}


def test_faults_are_reproducible_and_clear_on_retry() -> None:
    settings = StandInSettings(status_rates={429: 0.3, 503: 0.2}, retry_after_s=0.5, malformed_rate=0.2, seed=3)
    kinds: dict[str, list[str]] = {}
    for _ in range(2):  # two servers with the same seed draw the same faults
        with StandInServer(echo, settings=settings) as srv:
            outcomes = []
            for i in range(30):
                status, body, headers = chat(srv.port, f"q{i}")
                if status == 200:
                    content = body["choices"][0]["message"]["content"]
                    outcomes.append("ok" if content == f"m1: q{i}" else "malformed")
                else:
                    outcomes.append(str(status))
                    assert headers.get("Retry-After") == "0.5"
            kinds.setdefault("runs", []).append(",".join(outcomes))
            faults = srv.faults
    first, second = kinds["runs"]
    assert first == second
    assert {"429", "503", "malformed", "ok"} <= set(first.split(","))
    assert sum(faults.values()) == sum(o != "ok" for o in first.split(","))


def test_latency_is_counted_in_flight() -> None:
    with StandInServer(echo, settings=StandInSettings(latency_s=0.3)) as srv:
        threads = [threading.Thread(target=chat, args=(srv.port, f"q{i}")) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert srv.stats()["peak_inflight"] == 4 and srv.stats()["requests"] == 4


@pytest.mark.parametrize(
    "settings",
    [
        {"latency_s": -1},
        {"status_rates": {200: 0.1}},
        {"malformed_rate": 2},
        {"status_rates": {429: 0.6}, "empty_rate": 0.6},
    ],
)
def test_bad_settings_are_rejected(settings: dict) -> None:
    with pytest.raises(ValueError):
        StandInSettings(**settings)


def test_geo_engine_cli_prints_ready_and_requires_the_key() -> None:
    env = {**os.environ, "GEO_TEST_KEY": SECRET}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rewards.stand_in.geo_engine", "--port", "0", "--api-key-env", "GEO_TEST_KEY"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("STAND_IN_SERVER_READY port=")
        port = int(line.split("=")[1])
        assert chat(port, "Query: x")[0] == 401
        body = {"messages": [{"role": "user", "content": "Query: coffee in town\n\nSources:\n[1] Fresh coffee."}]}
        status, reply, _ = call(port, "POST", "/v1/chat/completions", body, key=SECRET)
        assert status == 200 and reply["choices"][0]["message"]["content"] == "Fresh coffee [1]."
        assert reply["model"] == "relay-geo-engine"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert SECRET not in err and 'geo_engine_server: stats {"requests": 1, "peak_inflight": 1' in err


# ---------------------------------------------------------------- the GEO engine's rule


def test_engine_ranks_by_hits_then_first_mention_then_number() -> None:
    sources = [
        "Nothing relevant here.",  # 0 hits: not cited
        "We sell bread. A bakery in nashville too.",  # 2 hits, first at 19
        "Nashville bakery, affordable and fresh! Second sentence.",  # 3 hits, first at 0
        "Our bakery is in nashville.",  # 2 hits, first at 4
        "Best affordable coffeebakery.com for you.",  # 2 hits (inside a word), first at 5
    ]
    got = answer("affordable bakery in nashville", sources)
    assert got == (
        "Nashville bakery, affordable and fresh [3]. Our bakery is in nashville [4]. "
        "Best affordable coffeebakery.com for you [5]. A bakery in nashville too [2]."
    )


def test_engine_cuts_long_sentences_and_caps_citations() -> None:
    long_source = "coffee " * (MAX_WORDS + 10)
    got = answer("coffee", [long_source] + ["coffee."] * 6)
    sentences = got.split(" [")
    assert len(got.split("].")) - 1 == 5  # at most MAX_CITED sources
    assert len(sentences[0].split()) == MAX_WORDS
    assert answer("coffee", ["tea only"]) == NO_ANSWER


def test_engine_request_parsing() -> None:
    query, sources = parse_engine_request("Query: a b\n\nSources:\n[1] one\n[2] two\n[4] skipped")
    assert (query, sources) == ("a b", ["one", "two"])
    for text in ["no query\n[1] x", "Query: q\nno sources"]:
        with pytest.raises(BadRequest):
            parse_engine_request(text)
