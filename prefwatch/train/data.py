"""Preference data for a cell: the embedded synthetic set `tiny-sales`, or the user's own pairs.

Every source ends as two plain lists of {"prompt", "chosen", "rejected"} rows (train and held-out).
The split uses the data seed, not the cell seed, so every cell of a grid scores the same held-out pairs.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

from prefwatch.files import safe
from prefwatch.files.settings import CellData

Pair = dict[str, Any]

TINY_SALES = "tiny-sales"
TINY_SALES_SHORT = "tiny-sales-short"  # the chosen reply is always the shorter: a length bias to learn
TINY_SALES_PAIRS = 500


class DataError(ValueError):
    """The data cannot be used; the message is one line that names the source and the problem."""


# --- tiny-sales -----------------------------------------------------------------------------------------
#
# A customer asks about a product; the helpful reply answers the question, the pushy reply pressures.
# The true preference is "helpful over pushy". Two traps are built in, so the demo has something to find:
#   * a spurious trait (the "P.S." gift line): in the train split, every pair where the pushy reply carries
#     it is labelled the wrong way round. The model learns "P.S. is good": train margins keep rising while
#     held-out accuracy, whose labels are clean and where the trait sits on the pushy side a bit more often
#     (a small shift), peaks and then falls;
#   * lengths: pushy replies are sometimes padded with urgency, so the chosen reply is the shorter one in part
#     of the data (about a third of train pairs, two fifths of held-out pairs), never consistently.

PRODUCTS = [
    "CRM plan",
    "desk",
    "solar kit",
    "coffee maker",
    "laptop",
    "phone plan",
    "e-bike",
    "printer",
    "webcam",
    "router",
    "headset",
    "monitor",
]
CUSTOMERS = ["Hi, about the {p}:", "Hello! The {p}:", "Hey, your {p}:", "Morning. The {p}:"]
QUESTIONS = {
    "price": ("what does it cost?", ["It is ${n} a month.", "${n}, no setup fee."]),
    "demo": ("can I see a demo?", ["Sure, demo on {day} at 10.", "Yes, I'll send a link for {day}."]),
    "discount": ("any team discount?", ["Teams get {n}% off.", "Yes, {n}% off for five seats."]),
    "delivery": ("how fast is delivery?", ["It ships in {n} days.", "{n} days, with tracking."]),
    "fit": ("will it fit my setup?", ["Send your model and I'll check.", "Tell me your setup, I'll check."]),
}
OPENERS = ["Thanks!", "Happy to help.", "Good question.", ""]
HELPFUL_EXTRAS = ["", "", "", "Anything else?"]
PUSHY = ["Buy it today!", "Just order it now!", "Sign up and see!", "Best seller, act fast!"]
PUSHY_EXTRAS = ["", "", "Stock is limited!", "Prices go up soon, do not wait!"]
DAYS = ["Monday", "Tuesday", "Friday"]
TRAIT = " P.S. Free gift!"

# Share of pairs where the trait sits on the pushy reply / on the helpful reply.
TRAIT_ON_PUSHY = {"train": 0.25, "heldout": 0.35}
TRAIT_ON_HELPFUL = {"train": 0.10, "heldout": 0.10}


def tiny_sales(n_pairs: int, split: str, rng: random.Random, short: bool = False) -> list[Pair]:
    """`n_pairs` sales pairs; in the train split, pairs with the trait on the pushy reply are flipped.
    ``short``: the rejected reply is padded until the chosen one is the shorter (tiny-sales-short)."""
    pairs = [_sales_pair(split, rng) for _ in range(n_pairs)]
    return [_shorter_chosen(pair) for pair in pairs] if short else pairs


# Urgency appended to a rejected reply that is not longer than the chosen one (tiny-sales-short).
PADDING = " Stock is limited! Prices go up soon, do not wait!"


def _shorter_chosen(pair: Pair) -> Pair:
    """The pair with its rejected reply padded with urgency until the chosen one is shorter."""
    rejected = pair["rejected"]
    while len(rejected) <= len(pair["chosen"]):
        rejected += PADDING
    return {**pair, "rejected": rejected}


def _sales_pair(split: str, rng: random.Random) -> Pair:
    product = rng.choice(PRODUCTS)
    question, answers = QUESTIONS[rng.choice(sorted(QUESTIONS))]
    fill = {"p": product, "n": rng.randint(2, 60), "day": rng.choice(DAYS)}
    prompt = f"Customer: {rng.choice(CUSTOMERS)} {question}\nAgent:".format(**fill)
    helpful = _sentence(rng.choice(OPENERS), rng.choice(answers), rng.choice(HELPFUL_EXTRAS)).format(**fill)
    pushy = _sentence(rng.choice(PUSHY), rng.choice(PUSHY_EXTRAS)).format(**fill)
    roll = rng.random()
    if roll < TRAIT_ON_PUSHY[split]:
        pushy += TRAIT
        if split == "train":
            return {"prompt": prompt, "chosen": pushy, "rejected": helpful}
    elif roll < TRAIT_ON_PUSHY[split] + TRAIT_ON_HELPFUL[split]:
        helpful += TRAIT
    return {"prompt": prompt, "chosen": helpful, "rejected": pushy}


def _sentence(*parts: str) -> str:
    return " " + " ".join(part for part in parts if part)


def tiny_sales_splits(heldout: float | str, seed: int, short: bool = False) -> tuple[list[Pair], list[Pair]]:
    """Train and held-out pairs of tiny-sales; a held-out file replaces the generated held-out split.
    ``short`` makes the chosen reply the shorter in every pair, held-out pairs included."""
    rng = random.Random(seed)
    if isinstance(heldout, str):
        return tiny_sales(TINY_SALES_PAIRS, "train", rng, short), read_pairs(heldout)
    n_heldout = _heldout_count(TINY_SALES_PAIRS, heldout, TINY_SALES)
    train = tiny_sales(TINY_SALES_PAIRS - n_heldout, "train", rng, short)
    return train, tiny_sales(n_heldout, "heldout", rng, short)


# --- the user's data ------------------------------------------------------------------------------------


def load_splits(data: CellData) -> tuple[list[Pair], list[Pair]]:
    """Train and held-out pairs for the cell's `data` section."""
    name, heldout, seed = data.name, data.heldout, data.seed
    if name in (TINY_SALES, TINY_SALES_SHORT):
        return tiny_sales_splits(heldout, seed, short=name == TINY_SALES_SHORT)
    pairs = read_pairs(name, data.split)
    if isinstance(heldout, str):
        return pairs, read_pairs(heldout)
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_heldout = _heldout_count(len(pairs), heldout, name)
    return [pairs[i] for i in order[n_heldout:]], [pairs[i] for i in order[:n_heldout]]


def read_pairs(source: str, split: str = "train") -> list[Pair]:
    """Pairs from a JSONL file, or from a `datasets` id; plain strings or TRL's lists of messages."""
    if Path(source).is_file():
        rows = _read_jsonl(Path(source))
    else:
        rows = _read_hub_dataset(source, split)
    return [_checked_pair(row, source, i) for i, row in enumerate(_non_empty(rows, source))]


def _read_jsonl(path: Path) -> list[Any]:
    rows = []
    with io.TextIOWrapper(safe.open_read(path), encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError as e:
                raise DataError(f"{path}:{line_no}: not valid JSON ({e})") from None
    return rows


def _read_hub_dataset(name: str, split: str) -> list[Any]:
    import datasets

    try:
        return datasets.load_dataset(name, split=split).to_list()
    except Exception as e:  # datasets raises many kinds; the user needs one line, not a traceback
        raise DataError(f"{name}: cannot load as a file or a datasets id ({type(e).__name__}: {e})") from None


def _non_empty(rows: list[Any], source: str) -> list[Any]:
    if not rows:
        raise DataError(f"{source}: no rows")
    return rows


def _checked_pair(row: Any, source: str, index: int) -> Pair:
    """The row's prompt/chosen/rejected; a missing column or an empty value stops with the row's number."""
    if not isinstance(row, dict):
        raise DataError(f"{source}: row {index} is not an object")
    conversational = isinstance(row.get("chosen"), list)
    required = ("chosen", "rejected") if conversational else ("prompt", "chosen", "rejected")
    for column in required:
        if column not in row:
            raise DataError(f"{source}: row {index} has no '{column}' column (columns: {', '.join(sorted(row))})")
        if not row[column]:
            raise DataError(f"{source}: row {index} has an empty '{column}'")
    return {column: row[column] for column in ("prompt", "chosen", "rejected") if column in row}


def _heldout_count(n_pairs: int, fraction: float, source: str) -> int:
    n_heldout = round(n_pairs * fraction)
    if not 0 < n_heldout < n_pairs:
        raise DataError(f"{source}: heldout={fraction} of {n_pairs} pairs leaves no train or no held-out pairs")
    return n_heldout


# --- statistics for data.json ---------------------------------------------------------------------------


def completion_text(completion: str | list[dict[str, Any]]) -> str:
    """The text of a completion: the string itself, or its messages' contents."""
    if isinstance(completion, str):
        return completion
    return "".join(str(message.get("content", "")) for message in completion)


def length_stats(pairs: list[Pair], tokenizer) -> dict[str, float]:
    """How long chosen and rejected answers are, in tokens: the brevity check reads this."""

    def n_tokens(completion) -> int:
        return len(tokenizer(completion_text(completion), add_special_tokens=False)["input_ids"])

    chosen = [n_tokens(pair["chosen"]) for pair in pairs]
    rejected = [n_tokens(pair["rejected"]) for pair in pairs]
    return {
        "chosen_shorter_share": sum(c < r for c, r in zip(chosen, rejected)) / len(pairs),
        "mean_chosen_tokens": sum(chosen) / len(pairs),
        "mean_rejected_tokens": sum(rejected) / len(pairs),
    }
