"""Every job command the documentation shows runs: each ``relay <job> ... --config <path>`` or
``python -m ray_jobs.<job> ... --config <path>`` line in a code block of README.md, docs/ or a
recipe folder's README names a config that exists and passes ``--dry-run`` with the line's own
arguments (in process: no Ray, no weights). A config that ``relay init DIR`` writes is made
first, as a reader would. Also: README.md's links lead somewhere (mkdocs checks docs/'s own)."""

from __future__ import annotations

import importlib
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from markdown.extensions.toc import slugify  # type: ignore[import-untyped]  # mkdocs's Markdown; no stubs

from ray_jobs.cli import COMMANDS

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")), *sorted((REPO / "configs").rglob("README.md"))]
JOBS = ("train", "sft", "preference", "evaluate")
README_MAX_LINES = 250
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE = re.compile(r"`((?:\.venv/bin/)?(?:relay|python) [^`]+)`")


@dataclass(frozen=True)
class DocCommand:
    doc: str  # path relative to the repository
    line: int
    job: str
    args: tuple[str, ...]  # the job's arguments as written, --dry-run left out
    init: tuple[str, ...] | None  # the `relay init` arguments that write its config, if any

    @property
    def config(self) -> str:
        return self.args[self.args.index("--config") + 1]


def code_lines(text: str) -> list[tuple[int, str]]:
    """(line number, shell line) inside fenced code blocks (a line ending in \\ continues), and
    inline code spans that start with a command (`relay train --config ...` in a table or sentence)."""
    found: list[tuple[int, str]] = []
    inside, pending, start = False, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            inside, pending = not inside, ""
            continue
        if not inside:
            found += [(number, span) for span in INLINE.findall(line)]
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        found.append((start, pending + line))
        pending = ""
    return found


def segments(line: str) -> list[list[str]]:
    """The simple commands of a shell line (split at &&, ||, ; and |), comments dropped."""
    try:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, "#"
        tokens = list(lexer)
    except ValueError:  # not shell (an unbalanced quote in prose or YAML)
        return []
    parts: list[list[str]] = [[]]
    for token in tokens:
        if token in ("&&", "||", ";", "|", "&"):
            parts.append([])
        else:
            parts[-1].append(token)
    return [part for part in parts if part]


def job_of(tokens: list[str]) -> tuple[str, list[str]] | None:
    """(job, its arguments) when ``tokens`` run a job (also after a prefix such as ``ray job submit ... --``)."""
    for i, token in enumerate(tokens):
        if Path(token).name == "relay" and i + 1 < len(tokens):
            return tokens[i + 1], tokens[i + 2 :]
        if token == "-m" and i + 1 < len(tokens) and tokens[i + 1].startswith("ray_jobs."):
            module = tokens[i + 1].removeprefix("ray_jobs.")
            job = next((name for name, (mod, _) in COMMANDS.items() if mod == f"ray_jobs.{module}"), module)
            return job, tokens[i + 2 :]
    return None


def is_placeholder(path: str) -> bool:
    """``--config FILE``, ``--config <path>``, ``--config {file}``: a usage line, not a command."""
    return path.isupper() or any(c in path for c in "<>{}[]$") or path.startswith("...")


def doc_commands(docs: list[Path] = DOCS) -> list[DocCommand]:
    commands: list[DocCommand] = []
    for doc in docs:
        text = doc.read_text()
        init: dict[str, tuple[str, ...]] = {}  # directory -> the `relay init` arguments that wrote it
        for number, line in code_lines(text):
            for tokens in segments(line):
                found = job_of(tokens)
                if found is None:
                    continue
                job, args = found
                if job == "init" and args:
                    init.setdefault(next(a for a in args if not a.startswith("-")).rstrip("/"), tuple(args))
                if job not in JOBS or "--config" not in args[:-1]:
                    continue
                path = args[args.index("--config") + 1]
                if is_placeholder(path):
                    continue
                made_by = next((arguments for d, arguments in init.items() if path.startswith(f"{d}/")), None)
                relative = str(doc.relative_to(REPO)) if doc.is_relative_to(REPO) else str(doc)
                commands.append(DocCommand(relative, number, job, tuple(a for a in args if a != "--dry-run"), made_by))
    return commands


COMMANDS_IN_DOCS = doc_commands()


@pytest.fixture(autouse=True)
def _no_ray(dry_run_without_ray: None) -> None:
    """A dry run that tried to start Ray would fail here (conftest's ``dry_run_without_ray``)."""


def run_job(job: str, argv: list[str]) -> int:
    module = importlib.import_module(COMMANDS[job][0])
    try:
        return int(module.main(argv))
    except SystemExit as stop:  # argparse
        return stop.code if isinstance(stop.code, int) else 2


def test_the_docs_show_job_commands_with_configs() -> None:
    assert len(COMMANDS_IN_DOCS) >= 5, [f"{c.doc}:{c.line}" for c in COMMANDS_IN_DOCS]
    assert {c.job for c in COMMANDS_IN_DOCS} >= {"train", "sft", "preference", "evaluate"}


@pytest.mark.parametrize("command", COMMANDS_IN_DOCS, ids=lambda c: f"{c.doc}:{c.line}")
def test_every_documented_command_names_an_existing_config_and_passes_its_dry_run(
    command: DocCommand, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    where = f"{command.doc}:{command.line}: relay {command.job} {' '.join(command.args)}"
    if command.init is not None:  # the config `relay init` writes, made where the reader runs it
        monkeypatch.chdir(tmp_path)
        assert run_job("init", list(command.init)) == 0, f"{where}: relay init {' '.join(command.init)} failed"
    assert Path(command.config).is_file(), f"{where}: {command.config} does not exist"
    code = run_job(command.job, [*command.args, "--dry-run"])
    err = capsys.readouterr().err
    assert code == 0, f"{where}: --dry-run exited {code}: {err.strip()[-600:]}"


def test_extraction_finds_commands_and_skips_usage_lines(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text(
        "Prose, then `relay sft --config configs/inline.yaml run.steps=3` inline.\n"
        "```bash\n"
        "relay init mytask --gpu   # a starter\n"
        "relay train --config mytask/config.yaml --dry-run && relay train --config mytask/config.yaml\n"
        "RAY_ADDRESS=auto ray job submit --working-dir . -- \\\n"
        "    python -m ray_jobs.preference --config configs/x.yaml algorithm.name=dpo  # trailing note\n"
        "relay sft --config FILE [a.b=value ...]\n"
        ".venv/bin/relay evaluate --config <path>\n"
        "```\n"
    )
    found = [(c.line, c.job, c.args, c.init) for c in doc_commands([doc])]
    assert found == [
        (1, "sft", ("--config", "configs/inline.yaml", "run.steps=3"), None),
        (4, "train", ("--config", "mytask/config.yaml"), ("mytask", "--gpu")),
        (4, "train", ("--config", "mytask/config.yaml"), ("mytask", "--gpu")),
        (5, "preference", ("--config", "configs/x.yaml", "algorithm.name=dpo"), None),
    ]


LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


def anchors(markdown_file: Path) -> set[str]:
    """The heading ids mkdocs (Python-Markdown's toc) gives a page, outside code blocks."""
    found, inside = set(), False
    for line in markdown_file.read_text().splitlines():
        if FENCE.match(line):
            inside = not inside
        elif not inside and (heading := re.match(r"^#{1,6}\s+(.*?)\s*#*$", line)):
            found.add(slugify(re.sub(r"[`*]", "", heading.group(1)), "-"))
    return found


def test_every_relative_link_of_the_readme_leads_to_a_file_and_heading() -> None:
    broken = []
    for match in LINK.finditer((REPO / "README.md").read_text()):
        target = match["target"]
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = REPO / path if path else REPO / "README.md"
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {path or 'README.md'}")
    assert not broken, broken


def test_the_readme_is_at_most_250_lines() -> None:
    lines = len((REPO / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}: details go in docs/)"
