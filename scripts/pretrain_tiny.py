"""Pretrain the embedded tiny model's weights (prefwatch/train/tiny_weights.safetensors).

A preference tuner starts from a model that already writes: a random-init model's greedy completions
are one byte repeated, and the completions pane would show nothing a preference changed. So the tiny
Llama (built by prefwatch.train.tiny from its config and seed) is trained briefly as a causal LM on
sales replies of both kinds (helpful and pushy, from the tiny-sales generator with a seed of its own,
not the grid's data seed), then its weights are shipped in the package: ~1.4 MB, built once, loaded
in milliseconds. One CPU thread, fixed seeds: the same weights on the same torch build.

    python scripts/pretrain_tiny.py            # writes prefwatch/train/tiny_weights.safetensors
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from prefwatch.train import data, tiny

STEPS = 400
BATCH = 32
LEARNING_RATE = 3e-3
PAIRS = 2000
SEED = 99  # the replies' generator; the grids' split seed is 1234 by default


def pretrain(steps: int = STEPS) -> torch.nn.Module:
    torch.set_num_threads(1)
    tokenizer = tiny.build_tokenizer()
    model = tiny.build_model(tokenizer)
    rng = random.Random(SEED)
    texts = []
    for _ in range(PAIRS):
        pair = data._sales_pair("heldout", rng)  # clean labels: both replies as written, no swap
        texts += [pair["prompt"] + pair["chosen"], pair["prompt"] + pair["rejected"]]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    model.train()
    started = time.time()
    for step in range(steps):
        batch = rng.sample(ids, BATCH)
        width = max(map(len, batch))
        inputs = torch.full((BATCH, width), tokenizer.pad_token_id)
        labels = torch.full((BATCH, width), -100)
        mask = torch.zeros((BATCH, width), dtype=torch.long)
        for row, tokens in enumerate(batch):
            inputs[row, : len(tokens)] = torch.tensor(tokens)
            labels[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        loss = model(input_ids=inputs, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step} loss {loss.item():.3f} ({time.time() - started:.0f} s)", flush=True)
    return model


def main() -> int:
    model = pretrain()
    target = Path(tiny.__file__).with_name(tiny.WEIGHTS_FILE)
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}, str(target))
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
