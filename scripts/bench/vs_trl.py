"""TRL GRPOTrainer and relay side by side, in one run: mean seconds per step.

    python -m scripts.bench.vs_trl [--models tiny,26M] [--ks 0,2,4] [--placements separate,colocated]
                                   [--judge-latency-s 1.0] [--steps 12] [--repeats 1]
                                   [--model-path PATH [--name NAME]] [--lora] [--out runs/bench_vs_trl/results.json]

Both trainers get identical random-weight models (relay's built-in tiny model,
``model.tiny.warmup_steps=0``, built once and saved as a Hugging Face directory
both load), the same 64 prompts (the first 64 rows of
``configs/data/business_descriptions.jsonl``, no system prompt), the same step
shape (2 prompts x 8 samples x 32 new tokens, temperature 1) and ONE stand-in
judge server (``rewards/stand_in/judge_server.py``) answering after ``--judge-latency-s``.
TRL runs first (``scripts/bench/trl/runner.py``, its own process; time per
step from a callback at each ``on_step_end``), then relay at each k =
``pipeline.max_staleness``, once per ``--placements`` entry (``pipeline.placement``;
columns ``relay k=K`` for separate, ``colocated k=K`` for colocated, each k's side by
side) (``python -m ray_jobs.train``, its own process, with
its defaults except the step shape, model, data, judge and steps; time per step
= between the moments (``time.monotonic()``) its console lines of consecutive steps arrive,
checked against ``time/step_s`` in ``metrics.jsonl``). Reported: the MEAN over
steps 3-12 (1-based), with sd and min/max, since relay's steps with k >= 1 come
in bursts. A relay run at k lasts 12 + k steps (unless ``--drain``): its last k
steps have nothing left to generate and would flatter the mean. ``--model-path`` benchmarks any Hugging Face directory or relay
``model.path`` instead of the built-in shapes (``--lora``: LoRA in both).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from scripts.bench.trl.report import (
    PLACEMENTS,
    STAGE_KEYS,
    columns,
    console_step,
    durations_from_ends,
    format_cross_check,
    format_load,
    format_loads,
    format_markdown,
    format_repeats,
    format_spread,
    format_stages,
    format_table,
    relay_step_s,
    stage_means,
    summarise,
    summary_json,
    window_stats,
)

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "configs/data/business_descriptions.jsonl"
KEY_ENV = "BENCH_VS_TRL_JUDGE_KEY"
JUDGE_MODEL = "relay-heuristic-judge"
SHAPES = {  # model.tiny.* fields
    "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 128},
    "26M": {"hidden_size": 512, "num_layers": 8, "num_heads": 8, "num_kv_heads": 4, "intermediate_size": 1536},
}
STEP_SHAPE = [  # relay overrides: the step shape and its sampling (TRL: scripts/bench/trl/runner.py)
    "pipeline.prompts_per_step=2",
    "rollout.group_size=8",
    "rollout.max_new_tokens=32",
    "rollout.temperature=1.0",
    "data.system_prompt=null",
]
OUTPUTS_OFF = ["wandb.mode=disabled", "run.save_final=false", "run.checkpoint_every=0"]  # TRL: no report, no save
DEMO_TASK = [  # the prompts file is a copy of the demo's rows, so relay needs the demo's field and rubric named
    "data.prompt_field=description",  # TRL reads 'description' too
    "judge.rubric=seed000",  # TRL: JudgeConfig()'s rubric
]


def build_model(name: str, root: Path) -> tuple[str, int]:
    """The built-in tiny model of shape ``SHAPES[name]`` with random weights: its directory, its parameters."""
    from actors.model.loading import BUILTIN_TINY, ModelConfig, TinyModelConfig, build_tiny_model

    tiny = TinyModelConfig(**SHAPES[name], warmup_steps=0)
    path = build_tiny_model(ModelConfig(path=BUILTIN_TINY, cache_dir=str(root / "models"), tiny=tiny))
    return str(path.resolve()), count_parameters(str(path))


def count_parameters(model_dir: str) -> int:
    from transformers import AutoModelForCausalLM

    return sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_dir).parameters())


def resolved_dir(model_path: str, root: Path) -> str:
    """A Hugging Face directory TRL can load for relay's ``model.path`` (built-in, adapter, hub cache)."""
    from actors.model.loading import ModelConfig, resolve_model_path

    return str(Path(resolve_model_path(ModelConfig(path=model_path, cache_dir=str(root / "models")))).resolve())


def write_prompts(root: Path, n: int) -> Path:
    """The first ``n`` rows of the toy dataset, as a jsonl both trainers read."""
    rows = DATA.read_text().splitlines()[:n]
    path = root / f"prompts-{n}.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


@contextlib.contextmanager
def judge_server(latency_s: float, log: Path) -> Iterator[str]:
    """One stand-in judge on 127.0.0.1 with a per-run key in ``KEY_ENV``; yields its base URL."""
    from ray_jobs.runtime.local_servers import local_server

    with local_server(
        "rewards.stand_in.judge_server", KEY_ENV, JUDGE_MODEL, ["--latency-s", str(latency_s)], log
    ) as url:
        yield url


def judge_requests(base_url: str) -> int:
    """Chat completions the judge server has accepted so far (``GET /stats``)."""
    req = urllib.request.Request(base_url.removesuffix("/v1") + "/stats")
    req.add_header("Authorization", f"Bearer {os.environ[KEY_ENV]}")
    with urllib.request.urlopen(req, timeout=10) as reply:
        return int(json.load(reply)["requests"])


@contextlib.contextmanager
def load_sampled(every_s: float = 5.0) -> Iterator[list[float]]:
    """The machine's 1-minute load average every ``every_s`` during the block (a benchmark run
    that shared the cores with other work is not a measurement: the run itself accounts for ~2)."""
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(every_s):
            samples.append(os.getloadavg()[0])

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()


def timed_lines(cmd: list[str], log: Path, load: list[float] | None = None) -> list[tuple[float, str]]:
    """Run ``cmd`` (stderr into stdout); every output line with the time it arrived (``time.monotonic()``);
    the load average while it ran is appended to ``load``."""
    lines: list[tuple[float, str]] = []
    with load_sampled() as samples, log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.monotonic(), line))
            out.write(line)
        if proc.wait() != 0:
            raise RuntimeError(f"{cmd[2]} exited with {proc.returncode}; log: {log}")
    if load is not None:
        load.extend(samples)
    return lines


def run_trl(model_dir: str, prompts: Path, url: str, steps: int, lora: bool, run_dir: Path) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / "trl_times.json"
    cmd = [sys.executable, "-m", "scripts.bench.trl.runner", "--model", model_dir, "--prompts", str(prompts)]
    cmd += ["--base-url", url, "--api-key-env", KEY_ENV, "--steps", str(steps), "--out", str(out)]
    started, load = time.monotonic(), list[float]()
    timed_lines(cmd + (["--lora"] if lora else []), run_dir / "trl.log", load)
    marks = json.loads(out.read_text())
    return {
        "load_1m": load,
        "durations": durations_from_ends(marks["ends"], marks["start"]),
        "step_time": {s + 1: t for s, t in enumerate(marks["step_time"])},  # TRL's own, a cross-check
        "judge_requests": marks["judge_requests"],
        "wall_s": time.monotonic() - started,
    }


def relay_overrides(
    model_path: str, prompts: Path, url: str, run: tuple[str, int], steps: int, lora: bool, run_dir: Path
) -> list[str]:
    """relay's overrides for one run at ``run`` = (``pipeline.placement``, ``pipeline.max_staleness``)."""
    placement, k = run
    overrides = [f"model.path={model_path}", f"data.path={prompts}", *STEP_SHAPE, *DEMO_TASK, *OUTPUTS_OFF]
    overrides += [f"pipeline.placement={placement}", f"pipeline.max_staleness={k}"]
    overrides += [f"run.steps={steps}", f"run.output_dir={run_dir}"]
    overrides += [f"judge.base_url={url}", f"judge.api_key_env={KEY_ENV}", f"judge.model={JUDGE_MODEL}"]
    return overrides + (["learner.lora.enabled=true"] if lora else [])


def run_relay(overrides: list[str], run: tuple[str, int], run_dir: Path) -> dict:
    """One relay run (module docstring) with ``overrides`` (``relay_overrides``, then ``--relay-set``'s)."""
    started, load = time.monotonic(), list[float]()
    lines = timed_lines([sys.executable, "-m", "ray_jobs.train", *overrides], run_dir.with_suffix(".log"), load)
    ends = [t for t, line in lines if console_step(line) is not None]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        "placement": run[0],
        "k": run[1],
        "durations": durations_from_ends(ends),
        "step_s": relay_step_s(rows),
        "stages": {key: [r.get(key) for r in rows] for key in STAGE_KEYS},
        "wall_s": time.monotonic() - started,
        "load_1m": load,
    }


def bench_model(
    name: str, model_path: str, trl_dir: str, args, prompts: Path, url: str, root: Path, label: str | None = None
) -> dict:
    """TRL, then relay at each k and placement, on one model (runs under ``root / name``, printed as
    ``label``); every run's raw per-step times, relay's keyed by column."""
    label = label or name
    result: dict = {"model_path": model_path, "relay": {}}
    before = judge_requests(url)
    result["trl"] = run_trl(trl_dir, prompts, url, args.steps, args.lora, root / name / "trl")
    result["trl"]["server_requests"] = judge_requests(url) - before
    print(
        f"[{label}] TRL: {window_stats(result['trl']['durations'], 3, args.last)}; "
        f"{format_load(result['trl']['load_1m'])}",
        flush=True,
    )
    for placement, k, col in columns(args.placements, args.ks):
        before = judge_requests(url)
        steps = args.steps + (0 if args.drain else k)  # the window's steps each launch a new batch
        run_dir = root / name / col.replace(" ", "-").replace("=", "")  # relay-k0, colocated-k2
        overrides = relay_overrides(model_path, prompts, url, (placement, k), steps, args.lora, run_dir)
        relay = run_relay(overrides + args.relay_set, (placement, k), run_dir)
        relay["server_requests"] = judge_requests(url) - before
        result["relay"][col] = relay
        stages = stage_means(relay["stages"], 3, args.last)
        stats = window_stats(relay["durations"], 3, args.last)
        print(f"[{label}] {col}: {stats}; {format_load(relay['load_1m'])}; stages {stages}", flush=True)
    return result


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,26M", help=f"built-in shapes, of {sorted(SHAPES)}")
    parser.add_argument("--model-path", default=None, help="an HF directory or relay model.path instead of --models")
    parser.add_argument("--name", default=None, help="the --model-path model's name in the table")
    parser.add_argument("--lora", action="store_true", help="LoRA in both (relay: learner.lora.enabled)")
    parser.add_argument("--ks", default="0,2,4", help="relay pipeline.max_staleness values")
    parser.add_argument(
        "--placements",
        default="separate",
        help=f"relay pipeline.placement values, of {', '.join(PLACEMENTS)}: relay runs once per k and placement",
    )
    parser.add_argument(
        "--relay-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra override for every relay run (repeatable), e.g. pipeline.forward_ahead=false",
    )
    parser.add_argument("--judge-latency-s", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=12, help="steps per run; the mean is over steps 3..steps")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run the whole comparison (TRL, then relay at each k) this many times in turn; each repeat is a "
        "row ('26M #2') and the ratios' mean and range are printed at the end (runs move by up to ~15%%)",
    )
    parser.add_argument(
        "--drain",
        action="store_true",
        help="run relay for exactly --steps (its last k steps, with nothing left to generate, then fall in the "
        "window); default: --steps + k, so that every measured step also launches a batch (steady state)",
    )
    parser.add_argument("--out", default="runs/bench_vs_trl/results.json")
    args = parser.parse_args(argv)
    args.ks = [int(k) for k in args.ks.split(",") if k.strip()]
    args.placements = [p.strip() for p in args.placements.split(",") if p.strip()]
    if not args.placements or any(p not in PLACEMENTS for p in args.placements):
        parser.error(f"--placements takes a comma list of {', '.join(PLACEMENTS)} (got {args.placements})")
    args.last = args.steps
    if args.steps < 4:
        parser.error("--steps must be at least 4 (the mean is over steps 3..steps)")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    root = out.parent
    root.mkdir(parents=True, exist_ok=True)
    prompts, started = write_prompts(root, args.prompts), time.monotonic()
    models: dict[str, tuple[str, str, int | None]] = {}  # name: (relay model.path, TRL dir, parameters)
    if args.model_path:
        trl_dir = resolved_dir(args.model_path, root)
        models[args.name or Path(args.model_path).name] = (args.model_path, trl_dir, count_parameters(trl_dir))
    else:
        for name in args.models.split(","):
            path, built = build_model(name, root)
            models[name] = (path, path, built)
            print(f"model {name}: {built:,} parameters, {path}", flush=True)
    results: dict = {}
    with judge_server(args.judge_latency_s, root / "judge_server.log") as url:
        for repeat in range(1, args.repeats + 1):
            for name, (path, trl_dir, params) in models.items():
                label = name if args.repeats == 1 else f"{name} #{repeat}"
                run_root = root if args.repeats == 1 else root / f"repeat-{repeat}"
                bench = bench_model(name, path, trl_dir, args, prompts, url, run_root, label)
                results[label] = {**bench, "params": params, "model": name}
    summary = summarise(results, args.last)
    record = {"settings": vars(args), "summary": summary_json(summary), "results": results}
    out.write_text(json.dumps({**record, "wall_s": time.monotonic() - started}, indent=1))
    report(summary, results, args)
    print(f"\nraw per-step times: {out}; whole benchmark {time.monotonic() - started:.0f} s")
    return 0


def report(summary: dict, results: dict, args) -> None:
    """Print the tables (plain and markdown), the spread, the stage times, the cross-check and the load."""
    cols = [col for _, _, col in columns(args.placements, args.ks)]
    print(f"\nmean s/step over steps 3-{args.last}, judge latency {args.judge_latency_s} s (ratio = TRL / relay)")
    print(format_table(summary, cols))
    print("\n" + format_markdown(summary, cols))
    print("\n" + format_spread(summary, cols))
    print(f"\nrelay's own stage times (time/*, mean s/step over steps 3-{args.last}):\n" + format_stages(summary, cols))
    if args.repeats > 1:
        print("\nTRL / relay over the repeats:\n" + format_repeats(summary, cols))
    print("\ncross-check, each trainer's own step timing (mean s/step over the same steps):")
    print(format_cross_check(summary))
    print("\nload average during each run (1 min; the run itself accounts for about 2):")
    print(format_loads(results))


if __name__ == "__main__":
    raise SystemExit(main())
