"""What the model writes, as numbers: the length and the variety of its sampled completions.

A cell's ``completions.jsonl`` holds, per evaluation, greedy answers to the same few held-out prompts
(and the reference's, as step 0). These functions turn one evaluation's answers into the figures the
findings and the screens use: mean and spread of their length in tokens, the share that ran into
``max_new_tokens``, and distinct-2 (unique word bigrams over all bigrams of the evaluation's answers,
Li et al. 2016: near 1 for varied text, low when every answer says the same thing). Pure: no I/O.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Sequence

import msgspec


class Completion(msgspec.Struct, frozen=True):
    """One answer: the prompt's id (its held-out pair), the prompt, the text, its length in tokens,
    and whether it ended on EOS (else it ran into max_new_tokens)."""

    id: str
    prompt: str
    text: str
    tokens: int
    eos: bool


class LengthStats(msgspec.Struct, frozen=True):
    """One evaluation's answers in figures (NaN where there is nothing to measure)."""

    mean: float
    sd: float
    at_max: float  # share of answers that stopped at max_new_tokens, not on EOS
    distinct2: float  # distinct word bigrams / all word bigrams (NaN: no answer has two words)
    n: int


class Evaluation(msgspec.Struct, frozen=True):
    """One line of completions.jsonl: the answers at one step (step 0 with ``reference``: the reference's)."""

    step: int
    reference: bool
    max_new_tokens: int | None
    seconds: float | None  # what generating them cost
    stats: LengthStats
    completions: tuple[Completion, ...] = ()  # () once an older evaluation's texts are let go (bounded memory)


NO_STATS = LengthStats(math.nan, math.nan, math.nan, math.nan, 0)


def length_stats(completions: Sequence[Completion], max_new_tokens: int | None = None) -> LengthStats:
    """Mean and standard deviation of the answers' lengths, the share cut by max_new_tokens, distinct-2."""
    if not completions:
        return NO_STATS
    lengths = [c.tokens for c in completions]
    mean = sum(lengths) / len(lengths)
    sd = math.sqrt(sum((x - mean) ** 2 for x in lengths) / (len(lengths) - 1)) if len(lengths) > 1 else 0.0
    cut = [not c.eos and (max_new_tokens is None or c.tokens >= max_new_tokens) for c in completions]
    return LengthStats(mean, sd, sum(cut) / len(cut), distinct_ngrams([c.text for c in completions]), len(lengths))


def distinct_ngrams(texts: Sequence[str], n: int = 2) -> float:
    """Unique word n-grams over all word n-grams of ``texts`` pooled (NaN when there are none)."""
    grams = [tuple(words[i : i + n]) for text in texts for words in [text.split()] for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else math.nan


# Words compared when marking what an answer says that the reference's did not (a diff of two
# 4,000-character answers stays cheap).
DIFF_WORDS = 300
_WORDS = re.compile(r"\S+|\s+")


def new_words(text: str, reference: str) -> list[tuple[int, int]]:
    """Character spans of ``text`` holding the words ``reference`` lacks (a word diff of their first
    ``DIFF_WORDS`` words): what the pane highlights and the HTML report marks."""
    mine = _WORDS.findall(text)[:DIFF_WORDS]
    theirs = _WORDS.findall(reference)[:DIFF_WORDS]
    offsets = [0]
    for word in mine:
        offsets.append(offsets[-1] + len(word))
    matcher = difflib.SequenceMatcher(None, theirs, mine, autojunk=False)
    return [
        (offsets[start], offsets[end])
        for tag, _, _, start, end in matcher.get_opcodes()
        if tag in ("replace", "insert") and "".join(mine[start:end]).strip()
    ]
