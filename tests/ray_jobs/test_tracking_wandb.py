"""wandb.mode auto finds the credentials `wandb login` stored; entity, group and tags reach wandb.init.

Nothing here touches the network: credentials live in a temporary HOME or NETRC file and
wandb.init is replaced by a stand-in that records its arguments.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from ray_jobs.config.experiment import WandbConfig, load_config
from ray_jobs.runtime.tracking import _wandb_mode, start_wandb, wandb_credentials

FAKE_KEY = "local-" + "k3y" * 14  # the format wandb accepts: a prefix, a dash, 40+ word characters
CREDENTIAL_VARS = ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL", "NETRC")


@pytest.fixture
def no_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HOME and no wandb variables: a machine where nobody ran `wandb login`."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in CREDENTIAL_VARS:
        monkeypatch.delenv(var, raising=False)
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-files"))
    return home


def _write_netrc(path: Path, machine: str = "api.wandb.ai") -> Path:
    """The entry `wandb login` appends to the netrc file."""
    path.write_text(f"machine {machine}\n  login user\n  password {FAKE_KEY}\n")
    path.chmod(0o600)
    return path


def test_auto_is_offline_without_any_credentials(no_credentials: Path) -> None:
    assert wandb_credentials() is None
    assert _wandb_mode(WandbConfig()) == "offline"


def test_auto_is_online_with_the_netrc_entry_wandb_login_wrote(
    no_credentials: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    netrc = _write_netrc(no_credentials / ".netrc")
    with caplog.at_level(logging.DEBUG):
        assert wandb_credentials() == str(netrc)
        assert _wandb_mode(WandbConfig(mode="auto")) == "online"
    out, err = capsys.readouterr()
    assert FAKE_KEY not in caplog.text + out + err  # says where the key is, never the key


def test_auto_reads_the_netrc_file_named_by_NETRC(no_credentials: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("NETRC", str(_write_netrc(tmp_path / "elsewhere.netrc")))
    assert _wandb_mode(WandbConfig()) == "online"


def test_auto_looks_for_the_entry_of_the_server_in_WANDB_BASE_URL(no_credentials: Path, monkeypatch) -> None:
    _write_netrc(no_credentials / ".netrc")  # an entry for api.wandb.ai only
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert _wandb_mode(WandbConfig()) == "offline"
    _write_netrc(no_credentials / ".netrc", machine="wandb.example.org")
    assert _wandb_mode(WandbConfig()) == "online"


def test_auto_is_online_with_WANDB_API_KEY_and_explicit_modes_are_kept(no_credentials: Path, monkeypatch) -> None:
    assert _wandb_mode(WandbConfig(mode="online")) == "online"
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    assert _wandb_mode(WandbConfig()) == "online"
    assert _wandb_mode(WandbConfig(mode="offline")) == "offline"
    assert _wandb_mode(WandbConfig(mode="disabled")) == "disabled"


def test_a_netrc_entry_that_is_no_api_key_means_offline(no_credentials: Path) -> None:
    (no_credentials / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password not*a*key\n")
    assert _wandb_mode(WandbConfig()) == "offline"


def test_entity_group_and_tags_reach_wandb_init(no_credentials: Path, tmp_path: Path, monkeypatch) -> None:
    import wandb

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(wandb, "init", lambda **kwargs: calls.append(kwargs) or "run")
    _write_netrc(no_credentials / ".netrc")
    cfg = load_config(None, ["wandb.entity=my-team", "wandb.group=sweep-1", "wandb.tags=[gspo,qwen]"]).wandb
    assert start_wandb(tmp_path, cfg, {"a": 1}, "run-name", "abc123") == "run"
    (kwargs,) = calls
    assert (kwargs["entity"], kwargs["group"], kwargs["tags"]) == ("my-team", "sweep-1", ["gspo", "qwen"])
    assert (kwargs["mode"], kwargs["project"], kwargs["name"], kwargs["id"]) == (
        "online",
        "relay",
        "run-name",
        "abc123",
    )


def test_unset_entity_group_and_tags_leave_wandb_its_defaults(
    no_credentials: Path, tmp_path: Path, monkeypatch
) -> None:
    import wandb

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(wandb, "init", lambda **kwargs: calls.append(kwargs) or "run")
    start_wandb(tmp_path, WandbConfig(), {}, "n", None)
    (kwargs,) = calls
    assert (kwargs["entity"], kwargs["group"], kwargs["tags"], kwargs["mode"]) == (None, None, None, "offline")
