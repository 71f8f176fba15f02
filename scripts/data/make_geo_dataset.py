"""Write seed 001's toy GEO dataset: a query, four web sources, and which one to rewrite.

Deterministic (fixed seed). Each row: ``id``, ``query`` (e.g. ``affordable
bakery in nashville``), ``sources`` (four short sources about businesses),
``target`` (0-based index of the source the policy rewrites) and ``source``
(that source's text, for ``data.prompt_template``). The words come from the
built-in tiny model's tokenizer corpus, so the tiny policy can write them.

The sources are made so the target starts out weak for the stand-in engine
(``rewards/stand_in/geo_engine.py``): one competitor names three of the query's
four terms in its first sentence, one names two, one names one, and the
target names one or two terms, late in its second sentence. A rewrite that names
more of the query's terms, early, gets cited earlier and longer.

    python -m scripts.data.make_geo_dataset   # writes configs/data/toy_geo.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

BUSINESSES = [
    "bakery",
    "coffee",
    "restaurant",
    "brewery",
    "salon",
    "clinic",
    "studio",
    "garage",
    "hotel",
    "academy",
    "boutique",
    "gym",
    "farm",
    "agency",
    "spa",
]
SERVICES = [
    "organic",
    "wedding",
    "catering",
    "repair",
    "tutoring",
    "grooming",
    "roofing",
    "plumbing",
    "design",
    "travel",
    "fitness",
    "yoga",
    "music",
    "photo",
    "jewelry",
    "furniture",
    "solar",
    "delivery",
]
QUALITIES = ["affordable", "premium", "trusted", "friendly", "modern", "professional", "innovative", "expert"]
PLACES = ["nashville", "texas", "downtown", "coastal", "mountain", "valley", "tennessee", "city"]
FILLER = [
    "Family owned since years ago, we care about every customer who walks in.",
    "Our team has served clients for a long time and keeps growing.",
    "We started small and still answer every call ourselves.",
    "Customers come back because we listen and keep our promises.",
]
NAMES = ["Northwind", "Bluebird", "Oakline", "Riverside", "Summit", "Lakeview", "Brightway", "Cedar"]


def _row(i: int, rng: random.Random) -> dict:
    quality, service, business, place = (
        rng.choice(QUALITIES),
        rng.choice(SERVICES),
        rng.choice(BUSINESSES),
        rng.choice(PLACES),
    )
    query = f"{quality} {service} {business} in {place}"
    names = rng.sample(NAMES, 4)
    article = "an" if quality[0] in "aeiou" else "a"
    strong = (
        f"{names[0]} is {article} {quality} {service} {business} that opened last spring. "
        f"Book online or call for an appointment."
    )
    medium = f"{names[1]} runs a {service} {business} with a small team. Prices are listed on the website."
    weak = f"{names[2]} offers {business} services for every budget. Ask about seasonal offers."
    where = f"our {business} in {place}" if rng.random() < 0.5 else f"us in {place}"
    target_text = f"{names[3]}: {rng.choice(FILLER)} You can also find {where}."
    others = [strong, medium, weak]
    rng.shuffle(others)
    target = rng.randrange(4)
    sources = others[:target] + [target_text] + others[target:]
    return {"id": f"geo{i:03d}", "query": query, "sources": sources, "target": target, "source": target_text}


def make_rows(n: int, seed: int) -> list[dict]:
    """``n`` rows, the same for the same ``seed``."""
    rng = random.Random(seed)
    return [_row(i, rng) for i in range(n)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="configs/data/toy_geo.jsonl")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rows = make_rows(args.n, args.seed)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} rows to {path}")


if __name__ == "__main__":
    main()
