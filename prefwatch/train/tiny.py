"""The embedded tiny model: a small Llama and a byte-level tokenizer, built here, never downloaded.

The demo grid must run on a laptop with no network, so the model is built from a config and given the
weights shipped beside this file (``tiny_weights.safetensors``: the config's random init, pretrained
briefly on sales replies by ``scripts/pretrain_tiny.py`` so that it writes replies a preference can
change), then saved once to a cache folder. Two cells starting at the same moment may both build it: each
builds into its own temporary folder and renames it into place; the loser throws its copy away.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

TINY_MODEL_NAME = "tiny"
TINY_MODEL_VERSION = "tiny-model-v2"  # bump when the architecture, the tokenizer or the weights change
WEIGHTS_FILE = "tiny_weights.safetensors"  # beside this module (scripts/pretrain_tiny.py writes it)
BUILD_SEED = 0

MODEL_SHAPE = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
}

PAD, EOS = "<pad>", "</s>"
# Renders TRL's conversational data (lists of messages) as plain text; the tiny model has no real chat format.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def cache_dir() -> Path:
    """Where the tiny model lives: $PREFWATCH_CACHE, else ~/.cache/prefwatch."""
    root = os.environ.get("PREFWATCH_CACHE") or Path.home() / ".cache" / "prefwatch"
    return Path(root) / TINY_MODEL_VERSION


def tiny_model_path() -> Path:
    """The folder holding the tiny model and tokenizer, built on first use."""
    path = cache_dir()
    if not (path / "config.json").is_file():
        _build_atomically(path)
    return path


def build_tokenizer():
    """One token per byte plus pad and eos: any text encodes, and no vocabulary file is needed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {PAD: 0, EOS: 1} | {char: i + 2 for i, char in enumerate(byte_chars)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([PAD, EOS])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=PAD, eos_token=EOS)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(tokenizer):
    """A ~0.36M-parameter Llama, randomly initialised: big enough to learn surface preferences, small
    enough for one CPU thread. ``pretrained_model`` gives it the shipped weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        **MODEL_SHAPE,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(BUILD_SEED)
    return LlamaForCausalLM(config)


def pretrained_model(tokenizer):
    """The tiny Llama with the shipped pretrained weights (the tied output layer is the embedding)."""
    from safetensors.torch import load_file

    model = build_model(tokenizer)
    weights = load_file(str(Path(__file__).with_name(WEIGHTS_FILE)))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"{WEIGHTS_FILE} does not fit the tiny model ({missing[:3]}, {unexpected[:3]})")
    model.tie_weights()
    return model


def _build_atomically(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tokenizer = build_tokenizer()
        pretrained_model(tokenizer).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.rename(tmp, path)
    except OSError:
        if not (path / "config.json").is_file():  # not another cell winning the race: a real failure
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
