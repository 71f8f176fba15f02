"""Shared fixtures: a built-in tiny model cached once per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Keep wandb, torch extensions and the tiny-model cache inside the repo's ignored .cache/.
CACHE = REPO_ROOT / ".cache"
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(CACHE / "torch_extensions"))
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One torch/OpenMP thread per process: the suite runs in two test processes (pytest-xdist), each
# with Ray actors of one thread; more threads than cores makes OpenMP spin (a tiny-model build
# took 75 s instead of 19 s with two processes of two threads each on our 2-core machine).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# Tests start their own local Ray (address="local"); a cluster address from the caller's shell
# would send them to a cluster they did not start.
os.environ.pop("RAY_ADDRESS", None)

# The longest files (about a minute or more each on our 2-core machine) start first, longest
# first, so the test processes finish together instead of one running a long file alone at the
# end; pytest-xdist keeps this order (``--no-loadscope-reorder`` in pyproject.toml). The rest
# follow in collection order. Only the order depends on this list, never a result.
LONGEST_FIRST = (
    "tests/ray_jobs/test_train_scaleout_e2e.py",
    "tests/ray_jobs/test_actor_faults_e2e.py",
    "tests/ray_jobs/test_resume_k2_e2e.py",
    "tests/ray_jobs/test_resume_e2e.py",
    "tests/ray_jobs/test_offline_e2e.py",
    "tests/actors/test_rollout_vllm.py",
    "tests/ray_jobs/test_sft_resume_e2e.py",
    "tests/ray_jobs/test_presets_e2e.py",
    "tests/scripts/test_bench_weight_sync.py",
    "tests/ray_jobs/test_ray_job_submit.py",
    "tests/ray_jobs/test_resume_deepspeed_e2e.py",
    "tests/ray_jobs/test_learner_group.py",
    "tests/actors/test_model_files.py",
    "tests/ray_jobs/test_train_e2e.py",
    "tests/ray_jobs/test_evaluate_e2e.py",
    "tests/ray_jobs/test_judge_outage_e2e.py",
    "tests/ray_jobs/test_learner_group_checkpoint.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order the collected tests: the files of ``LONGEST_FIRST`` in its order, then the rest
    as collected (a stable sort, so each file's tests keep their order)."""
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


@pytest.fixture(scope="session", autouse=True)
def stale_ray_cluster_file():
    """The whole suite runs as on a machine where a Ray head once ran and died: a
    ``ray_current_cluster`` file naming a dead address. A bare ``ray.init()`` would try
    to join it and fail; every test must start its Ray with ``address="local"``.
    A file that is already there (a real cluster's) is left alone."""
    from ray._common.utils import get_ray_address_file

    path = Path(get_ray_address_file(None))
    if path.exists():
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("127.0.0.1:9")  # the discard port: nothing answers there
    try:
        yield path
    finally:
        if path.exists() and path.read_text() == "127.0.0.1:9":
            path.unlink()


@pytest.fixture(scope="session")
def tiny_model_config():
    """ModelConfig of the built-in tiny model, built once into the repo's cache."""
    from actors.model.loading import ModelConfig, resolve_model_path

    cfg = ModelConfig(cache_dir=str(CACHE / "relay"))
    resolve_model_path(cfg)
    return cfg


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_config):
    from actors.model.loading import load_tokenizer, resolve_model_path

    return load_tokenizer(resolve_model_path(tiny_model_config))


DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="module")
def restore_dist_env():
    """DeepSpeed sets this process's torch.distributed variables for its one-process group;
    later tests (Ray actors inherit the environment) must not see this process's MASTER_PORT."""
    saved = {name: os.environ.get(name) for name in DIST_VARS}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def zero3_partitions_everything(monkeypatch):
    """Every tiny-model tensor is below ZeRO-3's persistence threshold (1e5 elements), and
    persistent parameters stay materialised between steps; threshold 0 partitions them all,
    as a real model's large tensors are, so that reading full weights needs the gather and a
    checkpoint holds real partitions."""
    from actors.learner import deepspeed_backend as learner_deepspeed

    original = learner_deepspeed.deepspeed_config

    def config(learner_config, dtype: str, num_params: int | None = None) -> dict:
        cfg = original(learner_config, dtype, num_params)
        cfg["zero_optimization"]["stage3_param_persistence_threshold"] = 0
        return cfg

    monkeypatch.setattr(learner_deepspeed, "deepspeed_config", config)


def random_train_batch(step: int, n: int, model, seed: int, noise: float = 0.0):
    """``n`` random sequences of mixed lengths whose sampling log-probs are
    ``model``'s own (plus Gaussian ``noise``, to make the clip and IS terms work)."""
    import torch

    from actors.learner.learner import collate
    from actors.messages import TrainBatch
    from algorithms.logprobs import token_logprobs

    gen = torch.Generator().manual_seed(seed)
    prompts = [
        torch.randint(3, 1000, (int(torch.randint(1, 5, (1,), generator=gen)),), generator=gen).tolist()
        for _ in range(n)
    ]
    completions = [
        torch.randint(3, 1000, (int(torch.randint(1, 6, (1,), generator=gen)),), generator=gen).tolist()
        for _ in range(n)
    ]
    draft = TrainBatch(
        step=step,
        prompt_token_ids=prompts,
        completion_token_ids=completions,
        sampling_logprobs=[[0.0] * len(c) for c in completions],
        advantages=torch.randn(n, generator=gen).tolist(),
        policy_versions=[step] * n,
    )
    t = collate(draft, slice(0, n))
    with torch.no_grad():
        logits = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).logits
    logps = token_logprobs(logits[:, :-1], t["input_ids"][:, 1:])
    if noise:
        logps = logps + noise * torch.randn(logps.shape, generator=gen)
    sampling = [logps[i][t["completion_mask"][i].bool()].tolist() for i in range(n)]
    return TrainBatch(
        step=step,
        prompt_token_ids=prompts,
        completion_token_ids=completions,
        sampling_logprobs=sampling,
        advantages=draft.advantages,
        policy_versions=draft.policy_versions,
    )


@pytest.fixture(scope="session")
def make_train_batch():
    """``random_train_batch`` as a fixture (test modules cannot import conftest)."""
    return random_train_batch


def random_adapter_update(policy, version: int):
    """Give a peft ``policy`` random LoRA weights (seeded by ``version``) and return
    its adapter-only ``WeightsUpdate`` and the merged full weights it stands for."""
    import torch

    from actors.weights.sync import ObjectStoreWeightSync, adapter_state_dict, merged_state_dict

    torch.manual_seed(version)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_" in name:
                p.copy_(0.2 * torch.randn_like(p))
    update = ObjectStoreWeightSync().export_adapter(*adapter_state_dict(policy), version=version)
    return update, merged_state_dict(policy)


@pytest.fixture(scope="session")
def make_adapter_update():
    """``random_adapter_update`` as a fixture."""
    return random_adapter_update


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound, then released), for a server or
    process group the test starts."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port on 127.0.0.1 held for the test by a socket that never listens: a connection to it is
    refused at once (an unreachable endpoint without waiting for a timeout)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def shared_ray():
    """One local Ray for a module's in-process runs (each driver call uses the Ray this process
    joined instead of starting its own, and leaves it running); 8 logical CPUs so that every
    shape the tests run (a two-rank learner beside rollout workers) can be placed."""
    import ray

    from ray_jobs.runtime.ray_session import init_local_ray

    init_local_ray(8)  # as a run's own local Ray starts, without a job runtime env
    yield
    ray.shutdown()


@pytest.fixture
def dry_run_without_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """In the repository root, with ``ray.init`` refusing: a dry run that tried to start Ray fails."""
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("the dry run started Ray")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.chdir(REPO_ROOT)
