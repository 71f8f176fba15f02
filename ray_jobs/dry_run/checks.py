"""The dry-run's input checks (``ray_jobs/dry_run/plan.py``): what can be validated without loading a
tokenizer, weights or starting Ray.

A local data file must exist and its first rows must parse and have the fields the job
reads (``DatasetError``, one line, as the run would say it); a hub dataset is named, not
fetched. A model path is described, never loaded: a local path that does not exist is
reported as a note (it may be an earlier stage's output), not refused.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from actors.model.files import is_model_file
from actors.model.loading import BUILTIN_TINY
from ray_jobs.data.prompts import LOCAL_FORMATS, DataConfig, DatasetError, prompt_text

FIRST_ROWS = 5


def first_rows(path: str, key: str, n: int = FIRST_ROWS) -> list[dict[str, Any]]:
    """The first ``n`` rows of a local .jsonl/.json/.csv/.parquet file; ``DatasetError`` (one line)
    when it is missing, empty or does not parse."""
    file = Path(path)
    if not file.is_file():
        raise DatasetError(f"{key}: file {path} does not exist")
    suffix = file.suffix.lower()
    try:
        if suffix == ".jsonl":
            with file.open() as lines:
                rows = [json.loads(line) for line in (next(lines, "") for _ in range(n)) if line.strip()]
        elif suffix == ".json":
            loaded = json.loads(file.read_text())
            rows = (loaded if isinstance(loaded, list) else loaded.get("data", []))[:n]
        elif suffix == ".csv":
            with file.open(newline="") as handle:
                rows = [dict(r) for _, r in zip(range(n), csv.DictReader(handle))]
        else:
            import pyarrow.parquet as pq  # type: ignore[import-untyped]

            rows = pq.read_table(file).slice(0, n).to_pylist()
    except (ValueError, OSError, AttributeError) as exc:
        raise DatasetError(f"{key}: {path} does not parse as {suffix[1:]} ({type(exc).__name__}: {exc})") from None
    if not rows:
        raise DatasetError(f"{key}: {path} has no rows")
    if not all(isinstance(r, dict) for r in rows):
        raise DatasetError(f"{key}: {path}'s rows must be objects with named fields")
    return rows


def is_local_data(path: str) -> bool:
    """Whether a data path names a local file (by its suffix) rather than a hub dataset."""
    return Path(path).suffix.lower() in LOCAL_FORMATS


def check_prompt_rows(data: DataConfig, key: str = "data.path") -> str:
    """The prompt data's first rows make prompts (``data.prompt_template`` or ``prompt_field``)."""
    if not is_local_data(data.path):
        return f"{key} {data.path}: a hub dataset (not fetched by the dry-run)"
    rows = first_rows(data.path, key)
    for i, row in enumerate(rows):
        prompt_text(data, row, i, data.path, key.removesuffix(".path"))
    return f"{key} {data.path}: first {len(rows)} rows make prompts"


def check_sequence_rows(path: str | None, key: str, pairs: bool) -> str | None:
    """An SFT or preference file's first rows have a format the job reads."""
    if path is None:
        return None
    if not is_local_data(path):
        return f"{key} {path}: a hub dataset (not fetched by the dry-run)"
    rows = first_rows(path, key)
    for i, row in enumerate(rows):
        if pairs:
            ok = row.get("chosen") is not None and row.get("rejected") is not None
            need = "'chosen' and 'rejected' (and optionally 'prompt')"
        else:
            ok = (
                row.get("messages") is not None
                or (row.get("prompt") is not None and row.get("completion") is not None)
                or isinstance(row.get("text"), str)
            )
            need = "'messages', 'prompt' + 'completion', or 'text'"
        if not ok:
            raise DatasetError(f"{key}: row {i} of {path} has no usable format: it needs {need}")
    return f"{key} {path}: first {len(rows)} rows readable"


def describe_model_path(path: str, key: str) -> str:
    """Where ``path`` would load from, or a note that it does not exist here (yet)."""
    if path == BUILTIN_TINY:
        return f"{key} {path}: built on first use"
    if is_model_file(path):
        return f"{key} {path}: a model file, converted on first use"
    if Path(path).exists():
        return f"{key} {path}: local"
    if path.startswith(("/", ".", "~")) or path.count("/") != 1:
        return f"note: {key} {path} is not here (an earlier stage's output? the run fails unless it exists by then)"
    return f"{key} {path}: a hub model (not fetched by the dry-run)"
