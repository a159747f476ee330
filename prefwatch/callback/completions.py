"""What the model writes: greedy answers to a fixed sample of held-out prompts, at every evaluation.

Held-out accuracy says which answer of a pair the model ranks higher; it does not say what the model
now writes. A cell can win pairs by learning a shortcut (shorter answers, when the chosen ones are
shorter) and the rewards will not show it. So at each evaluation the same few held-out prompts are
answered greedily and appended to ``completions.jsonl`` (one line per evaluation), and once, as
step 0, by the reference: the model with its adapter disabled (or as it was before training).

The cost is one batched ``generate`` call of ``max_new_tokens`` per evaluation (8 prompts of the tiny
model: ~0.1 s next to an evaluation of ~0.6 s; bench/bench_completions.py measures the share).
Imports torch only when it generates; never trl or peft (an adapter is disabled through the
model's own ``disable_adapter``).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefwatch.files import safe

# Column names of the prompt's token ids in TRL's processed data sets (DPO; CPO, ORPO).
PROMPT_ID_COLUMNS = ("prompt_ids", "prompt_input_ids")
# Longest prompt text kept in a record (the prompt is for a person to read; the ids are generated from).
PROMPT_CHARS = 2000


def sample_indices(n_items: int, size: int) -> list[int]:
    """``size`` indices spread evenly over ``n_items`` (the same ones every time: the sample is fixed)."""
    size = max(0, min(size, n_items))
    return [i * n_items // size for i in range(size)]


class CompletionSampler:
    """Answers the same prompts at each call and appends them as one line of ``completions.jsonl``."""

    def __init__(self, path: Path, size: int, max_new_tokens: int = 64) -> None:
        self.path = Path(path)
        self.size = size
        self.max_new_tokens = max_new_tokens
        self.min_new_tokens = 0  # the benchmark sets it to max_new_tokens: every answer as long as allowed
        self.prompts: list[tuple[str, str, Any]] | None = None  # (id, text to show, token ids or the raw prompt)
        self.reference_written = _has_reference(self.path)  # a resumed job writes no second reference

    def choose(self, rows: Any) -> None:
        """The fixed sample, from a list of prompts or a (processed) data set of held-out pairs; the ids
        are the rows' positions as in eval_pairs.jsonl (``h0007``)."""
        n = len(rows)
        chosen = []
        for index in sample_indices(n, self.size):
            row = rows[index]
            text, ids = _prompt_of(row)
            chosen.append((f"h{index:04d}", text[:PROMPT_CHARS], ids))
        self.prompts = chosen

    def generate(self, model: Any, tokenizer: Any, step: int, reference: bool = False) -> dict[str, Any] | None:
        """Answer the sample (the adapter disabled for the reference) and append the record; None
        when there is nothing to answer."""
        if not self.prompts or tokenizer is None or model is None:
            return None
        import torch

        started = time.perf_counter()
        inputs = [_encode(tokenizer, given) for _, _, given in self.prompts]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        width = max(len(ids) for ids in inputs)
        device = next(model.parameters()).device
        input_ids = torch.full((len(inputs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(inputs), width), dtype=torch.long)
        for row, ids in enumerate(inputs):  # left padding: every answer starts in the same column
            if ids:
                input_ids[row, width - len(ids) :] = torch.tensor(ids)
                mask[row, width - len(ids) :] = 1
        training = model.training
        adapter_off = getattr(model, "disable_adapter", None) if reference else None
        model.eval()
        try:
            with torch.inference_mode(), adapter_off() if adapter_off else contextlib.nullcontext():
                output = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=mask.to(device),
                    max_new_tokens=self.max_new_tokens,
                    min_new_tokens=self.min_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=pad,
                    eos_token_id=tokenizer.eos_token_id,
                    use_cache=True,
                )
        finally:
            model.train(training)
        answers = output[:, width:].tolist()
        seconds = time.perf_counter() - started
        completions = []
        for (prompt_id, text, _), tokens in zip(self.prompts, answers):
            ended = tokenizer.eos_token_id in tokens
            kept = tokens[: tokens.index(tokenizer.eos_token_id)] if ended else tokens
            completions.append(
                {
                    "id": prompt_id,
                    "prompt": text,
                    "text": tokenizer.decode(kept, skip_special_tokens=True),
                    "tokens": len(kept),
                    "eos": ended,
                }
            )
        record = {
            "step": step,
            "time": time.time(),
            "reference": reference,
            "max_new_tokens": self.max_new_tokens,
            "seconds": round(seconds, 4),
            "completions": completions,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with safe.open_append(self.path) as f:  # never through a link planted in its place
            f.write((json.dumps(record) + "\n").encode())
        if reference:
            self.reference_written = True
        return record


def _prompt_of(row: Any) -> tuple[str, Any]:
    """(text to show, token ids or the prompt itself) of a string, a list of messages or a data set
    row; TRL's processed rows carry the ids it tokenized (chat template applied): those are answered."""
    if isinstance(row, dict):
        ids = next((row[c] for c in PROMPT_ID_COLUMNS if isinstance(row.get(c), Sequence)), None)
        prompt = row.get("prompt")
        return _prompt_text(prompt), [int(i) for i in ids] if ids is not None else prompt
    return _prompt_text(row), row


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):  # messages
        return "\n".join(str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in prompt)
    return "" if prompt is None else str(prompt)


def _encode(tokenizer: Any, prompt: Any) -> list[int]:
    """Token ids of a prompt: given as ids, a list of messages (the chat template), or text."""
    if isinstance(prompt, list) and all(isinstance(i, int) for i in prompt):
        return prompt
    if isinstance(prompt, list):
        return list(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True))
    return list(tokenizer(_prompt_text(prompt), add_special_tokens=False)["input_ids"])


def _has_reference(path: Path) -> bool:
    """Whether ``path`` already holds the reference's answers (its first line, as written)."""
    try:
        with safe.open_read(path) as f:
            first = f.readline(1 << 20)
        return bool(json.loads(first).get("reference"))
    except (OSError, ValueError, AttributeError):
        return False
