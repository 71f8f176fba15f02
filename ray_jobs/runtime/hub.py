"""Fail early, in one line, on a Hugging Face hub name that cannot be loaded.

``transformers`` and ``datasets`` retry an unreachable hub for tens of seconds
per file and then raise a 30-line traceback. Before anything is loaded the
driver asks the hub once (``huggingface_hub.HfApi.repo_info``, no retries): a
name that is neither a local path nor in the local cache must exist there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from actors.model.files import is_model_file

HUB_TIMEOUT_S = 10.0


class HubNameError(ValueError):
    """A model or dataset name that is not local and cannot be had from the hub (one line)."""


def check_hub_name(name: str, repo_type: Literal["model", "dataset"], key: str) -> None:
    """Raise ``HubNameError`` unless ``name`` is a local path, cached, or found on the hub (a model
    file, ``.gguf`` or ``package:...``, is checked where it is resolved: ``actors/model/files.py``)."""
    if Path(name).exists() or name.startswith("builtin:") or (repo_type == "model" and is_model_file(name)):
        return
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError

    probe = "config.json" if repo_type == "model" else "README.md"
    try:
        if isinstance(try_to_load_from_cache(name, probe, repo_type=repo_type), str):
            return
        HfApi().repo_info(name, repo_type=repo_type, timeout=HUB_TIMEOUT_S)
    except (HFValidationError, RepositoryNotFoundError):
        raise HubNameError(
            f"{key}: '{name}' is not a local path and the Hugging Face hub has no {repo_type} of "
            "that name (check the spelling; a gated or private one needs HF_TOKEN)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any network failure reads the same to the user
        raise HubNameError(
            f"{key}: '{name}' is not a local path and the Hugging Face hub cannot be reached "
            f"({type(exc).__name__}); check the network, or point {key} at a local copy"
        ) from None
