"""Write the toy refiner dataset of seed 004's CPU recipe: questions with a wrong draft answer.

Deterministic (fixed seed). Each row is about one of ``TOPICS`` (four small
businesses, in turn), in a random place and with a random adjective, and holds:

* ``question``: e.g. "What powers the busy city buses in Austin?";
* ``draft``: a draft answer that states the wrong thing, with one citation
  (half of the rows an allowed paper, half a made-up one), e.g.
  "The city buses in Austin run on diesel motors [diesel1998]." ;
* ``allowed_papers``: the two paper ids the answer may cite (``<word><year>``;
  the first is named after the topic's key term), and ``papers``, the same
  joined by ", " for ``data.prompt_template``;
* ``facts``: the reference fact, e.g. "The city buses in Austin run on electric motors.";
* ``key_terms``: the one word a correct answer must state (``electric``);
* ``false_claims``: the draft's wrong term and the other topics' key terms (a
  refined answer that lists every candidate answer is not correct).

The task is within the built-in tiny model's reach (``actors/model/loading.py``): key
terms are single tokens of its vocabulary, which its warm-up taught it to write
(run together, as in ``electricbuses.com``), but never in relation to the
request, so at the start it states the right one and nothing false about 1 %
of the time; the stand-in verifier (``rewards/stand_in/refiner_verifier.py``)
checks exactly the key terms and false claims. Substring matching is safe here:
no key term or false claim contains another one.

Why four topics: with 24 the tiny policy (64-dim, 2 layers) showed no learning
in 200 steps, with eight it reached about 6 %; with four it learns to state one
topic's key term whatever the question, so the pass rate rises from about 1 %
to about 25 % (configs/refiner_grpo/cpu_1_grpo.yaml), and the other topics' key terms
among the false claims keep it from listing every key term. Conditioning on
the question is beyond it at this scale.

    python -m scripts.data.make_refiner_dataset   # writes configs/data/toy_refiner.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import NamedTuple


class Topic(NamedTuple):
    """One question kind: ``{adj}``/``{place}`` fill the question, ``{place}``/``{term}`` the fact."""

    question: str
    fact: str
    key_term: str
    wrong_term: str
    second_paper: str


TOPICS: tuple[Topic, ...] = (
    Topic(
        "What powers the {adj} city buses in {place}?",
        "The city buses in {place} run on {term} motors.",
        "electric",
        "diesel",
        "transit2021",
    ),
    Topic(
        "What does the {adj} roastery in {place} roast?",
        "The roastery in {place} roasts {term} beans.",
        "coffee",
        "peanut",
        "roasting2017",
    ),
    Topic(
        "What does the {adj} brewery in {place} brew?",
        "The brewery in {place} brews {term}.",
        "beer",
        "soda",
        "malting2020",
    ),
    Topic(
        "What does the {adj} recording studio in {place} record?",
        "The recording studio in {place} records {term}.",
        "music",
        "podcasts",
        "acoustics2019",
    ),
)
ADJECTIVES = ("busy", "new", "old", "small", "famous", "local", "modern", "quiet")
PLACES = ("Austin", "Denver", "Chicago", "Portland", "Nashville", "San Diego", "Boston", "Seattle", "Miami", "Dallas")
FIRST_PAPER_YEARS = (2018, 2019, 2020, 2021)


def make_row(index: int, topic_index: int, rng: random.Random) -> dict[str, object]:
    """One row of ``TOPICS[topic_index]`` (fields in the module docstring)."""
    topic = TOPICS[topic_index]
    adj, place = rng.choice(ADJECTIVES), rng.choice(PLACES)
    papers = [f"{topic.key_term}{rng.choice(FIRST_PAPER_YEARS)}", topic.second_paper]
    cite = rng.choice(papers) if index % 2 == 0 else f"{topic.wrong_term}{rng.randint(1990, 2005)}"
    draft = topic.fact.format(place=place, term=topic.wrong_term).removesuffix(".") + f" [{cite}]."
    others = [t.key_term for i, t in enumerate(TOPICS) if i != topic_index]
    return {
        "id": f"refine-{index:04d}",
        "question": topic.question.format(adj=adj, place=place),
        "draft": draft,
        "allowed_papers": papers,
        "papers": ", ".join(papers),
        "facts": [topic.fact.format(place=place, term=topic.key_term)],
        "key_terms": [topic.key_term],
        "false_claims": [topic.wrong_term, *others],
    }


def make_rows(n: int, seed: int) -> list[dict[str, object]]:
    """``n`` rows with distinct questions, the topics in turn (balanced)."""
    if n > len(TOPICS) * len(ADJECTIVES) * len(PLACES):
        raise ValueError(f"at most {len(TOPICS) * len(ADJECTIVES) * len(PLACES)} distinct rows, asked for {n}")
    rng = random.Random(seed)
    rows: list[dict[str, object]] = []
    seen: set[object] = set()
    while len(rows) < n:
        row = make_row(len(rows), len(rows) % len(TOPICS), rng)
        if row["question"] not in seen:
            seen.add(row["question"])
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("configs/data/toy_refiner.jsonl"))
    parser.add_argument("--n", type=int, default=104)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = make_rows(args.n, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
