"""The toy refiner dataset: deterministic, shipped as generated, and consistent with the stand-in verifier's rule."""

from __future__ import annotations

import ast
import json
from collections import Counter
from pathlib import Path

import pytest

from rewards.recipes.refiner import citation_reward
from rewards.stand_in.refiner_verifier import verify
from scripts.data.make_refiner_dataset import ADJECTIVES, PLACES, TOPICS, make_rows

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "configs" / "data" / "toy_refiner.jsonl"


def _tiny_corpus_words() -> set[str]:
    """``actors.model.loading._CORPUS_WORDS``, read from the source (importing it would import torch: seconds)."""
    tree = ast.parse((REPO / "actors" / "model" / "loading.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "_CORPUS_WORDS":
            call = node.value
            assert isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
            return set(ast.literal_eval(call.func.value).split())
    raise AssertionError("actors/model/loading.py has no _CORPUS_WORDS")


def test_shipped_file_is_the_generators_output() -> None:
    shipped = [json.loads(line) for line in SHIPPED.read_text().splitlines()]
    assert shipped == make_rows(104, 0) == make_rows(104, 0)


def test_rows_fit_the_verifiers_rule_and_the_tiny_vocabulary() -> None:
    rows, corpus = make_rows(104, 0), _tiny_corpus_words()
    assert len({r["question"] for r in rows}) == len(rows)
    assert Counter(r["key_terms"][0] for r in rows) == {t.key_term: 26 for t in TOPICS}
    for row in rows:
        key = row["key_terms"][0]
        assert key in corpus  # a word the tiny model can write
        assert verify(row["key_terms"], row["false_claims"], row["facts"][0])[0]  # the fact passes
        assert not verify(row["key_terms"], row["false_claims"], row["draft"])[0]  # the draft does not
        draft_text = row["draft"].split(" [")[0].lower()  # the draft without its citation
        assert key not in row["question"].lower() and key not in draft_text
        assert set(row["false_claims"][1:]) == {t.key_term for t in TOPICS} - {key}
        assert row["papers"] == ", ".join(row["allowed_papers"]) and row["allowed_papers"][0].startswith(key)


def test_no_term_contains_another() -> None:
    terms = {t.key_term for t in TOPICS} | {t.wrong_term for t in TOPICS}
    assert not [(a, b) for a in terms for b in terms if a != b and a in b]  # substring matching is safe


def test_half_of_the_drafts_cite_an_allowed_paper() -> None:
    rewards = Counter(citation_reward(r["draft"], r["allowed_papers"]) for r in make_rows(104, 0))
    assert rewards == {1.0: 52, -1.0: 52}


def test_too_many_rows_is_an_error() -> None:
    with pytest.raises(ValueError, match="distinct rows"):
        make_rows(len(TOPICS) * len(ADJECTIVES) * len(PLACES) + 1, 0)
