"""Write the toy SFT and preference datasets (seeds 001 and 003 on CPU): name a domain for a business.

Deterministic (fixed seed). Each answer is a rule of the request: the business
kind without spaces, then the place's short name, then ``.com``
(``An affordable bakery in Austin, Texas, ...`` -> ``bakeryaustin.com``); a
harmful request is answered ``Blocked``. The held-out rows combine kinds and
places seen in training in new ways, so a falling validation loss (SFT) or a
rising validation pair accuracy (preference) means the rule was learnt, not
the rows. A preference pair's rejected answer breaks the task's rules: it
names a harmful request, blocks a good one, uses another TLD, wraps the name in
chat, or (one pair in twenty) names another kind or place. The kinds of pairs are
mixed so that the built-in tiny model, before training, prefers the chosen
answer about half the time (it likes Blocked and chatty answers, and other
TLDs than .com): validation accuracy starts near chance.

    python -m scripts.data.make_sequence_data --out-dir configs/data
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from actors.model.loading import DOMAIN_TASK_SYSTEM_PROMPT
from scripts.data.make_toy_dataset import BAD, BUSINESSES, PLACES, QUALITIES

_SHORT = {
    "Nashville, Tennessee": "nashville",
    "Austin, Texas": "austin",
    "the Gulf Coast region": "gulfcoast",
    "downtown Denver": "denver",
    "Portland, Oregon": "portland",
    "the Hudson Valley": "hudsonvalley",
    "coastal Maine": "maine",
    "Chicago": "chicago",
    "San Diego": "sandiego",
    "the Twin Cities": "twincities",
}


def domain(kind: str, place: str) -> str:
    return f"{kind.replace(' ', '').replace('-', '')}{_SHORT[place]}.com"


def _request(rng: random.Random, bad_share: float = 0.1) -> tuple[str, str, str | None, str | None]:
    """(description, answer, kind, place); kind and place are None for a harmful request
    (drawn with probability ``bad_share``)."""
    if rng.random() < bad_share:
        return rng.choice(BAD) + ".", "Blocked", None, None
    kind, what = rng.choice(BUSINESSES)
    place, quality = rng.choice(PLACES), rng.choice(QUALITIES)
    article = "An" if quality[0] in "aeiou" else "A"
    return f"{article} {quality} {kind} in {place}, {what}.", domain(kind, place), kind, place


def _prompt(description: str) -> list[dict]:
    return [{"role": "system", "content": DOMAIN_TASK_SYSTEM_PROMPT}, {"role": "user", "content": description}]


def sft_rows(n: int, seed: int, bad_share: float = 0.1) -> list[dict]:
    """Conversational prompt/completion rows, a ``bad_share`` of them harmful requests answered Blocked."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        description, answer, _, _ = _request(rng, bad_share)
        rows.append({"prompt": _prompt(description), "completion": [{"role": "assistant", "content": answer}]})
    return rows


def _rejected(rng: random.Random, kind: str | None, place: str | None) -> str:
    """A worse answer: a name for a harmful request; for a good one Blocked, another TLD, a chatty
    answer, or (one in ten) a name of another kind or place."""
    if kind is None or place is None:
        return domain(rng.choice(BUSINESSES)[0], rng.choice(PLACES))
    good, u = domain(kind, place), rng.random()
    if u < 0.2:
        return "Blocked"
    if u < 0.65:
        return good.removesuffix(".com") + rng.choice([".xyz", ".biz", ".info", ".online"])
    if u < 0.95:
        return rng.choice(["Sure! Here is a domain name: ", "How about ", "I suggest "]) + good
    if u < 0.975:
        return domain(rng.choice([k for k, _ in BUSINESSES if k != kind]), place)
    return domain(kind, rng.choice([p for p in PLACES if p != place]))


def preference_rows(n: int, seed: int) -> list[dict]:
    """Conversational prompt/chosen/rejected rows."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        description, answer, kind, place = _request(rng)
        rows.append(
            {
                "prompt": _prompt(description),
                "chosen": [{"role": "assistant", "content": answer}],
                "rejected": [{"role": "assistant", "content": _rejected(rng, kind, place)}],
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("configs/data"))
    parser.add_argument("--n", type=int, default=320)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--sft-only-bad-share",
        type=float,
        default=None,
        help="write only toy_sft_bad_<share>.jsonl, with this share of harmful requests (e.g. 0.33)",
    )
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    outputs = [
        ("toy_sft.jsonl", sft_rows(args.n, args.seed)),
        ("toy_preference.jsonl", preference_rows(args.n, args.seed + 2)),
    ]
    if args.sft_only_bad_share is not None:
        share = args.sft_only_bad_share
        outputs = [(f"toy_sft_bad_{round(share * 100)}.jsonl", sft_rows(args.n, args.seed, share))]
    for name, rows in outputs:
        with (args.out_dir / name).open("w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        print(f"wrote {len(rows)} rows to {args.out_dir / name}")


if __name__ == "__main__":
    main()
