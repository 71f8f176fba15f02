"""Shared fixtures: a built-in tiny model cached once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Keep wandb, torch extensions and the tiny-model cache inside the repo's ignored .cache/.
CACHE = REPO_ROOT / ".cache"
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(CACHE / "torch_extensions"))
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_config():
    """ModelConfig of the built-in tiny model, built once into the repo's cache."""
    from actors.models import ModelConfig, resolve_model_path

    cfg = ModelConfig(cache_dir=str(CACHE / "relay"))
    resolve_model_path(cfg)
    return cfg


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_config):
    from actors.models import load_tokenizer, resolve_model_path

    return load_tokenizer(resolve_model_path(tiny_model_config))
