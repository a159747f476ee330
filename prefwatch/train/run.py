"""Train one cell: model + LoRA adapter, data, the objective's TRL trainer, metrics files. Top to bottom.

Writes into the cell directory (names from prefwatch.files.rundir):
  data.json          at start: pair counts and chosen/rejected token lengths (the brevity check)
  metrics.jsonl      every Trainer log event (PrefwatchCallback)
  eval_pairs.jsonl   every evaluation: each held-out pair's chosen and rejected reward (pairs.py)
  completions.jsonl  every evaluation, and the reference at step 0: greedy answers to a fixed sample of
                     held-out prompts ([train] completions, completion_tokens; completions.py)
  checkpoints/       every save_every steps, the last two kept; --resume continues from the newest
  best/              the adapter at the best held-out evaluation, replaced when beaten (best.py)
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint
from trl import DPOConfig
from trl.experimental.cpo import CPOConfig
from trl.experimental.orpo import ORPOConfig

from prefwatch.callback import PrefwatchCallback
from prefwatch.files import rundir
from prefwatch.files.settings import CellSettings, DpoParams, ModelSettings, SimpoParams
from prefwatch.train.best import BestAdapter
from prefwatch.train.data import DataError, length_stats, load_splits
from prefwatch.train.pairs import CPOPairTrainer, DPOPairTrainer, ORPOPairTrainer, PairLog
from prefwatch.train.tiny import TINY_MODEL_NAME, tiny_model_path


def run(cell: CellSettings, cell_dir: Path, resume: bool = False) -> None:
    started = time.time()
    torch.set_num_threads(cell.threads)  # torch's default thread count makes tiny models ~55x slower
    datasets.disable_progress_bars()
    # TRL 1.16 calls a name transformers 5 deprecated, once per cell: noise in every stdout.log.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    transformers.utils.logging.disable_progress_bar()

    model, tokenizer = load_model(cell.model)
    train_pairs, heldout_pairs = load_splits(cell.data)
    write_data_stats(cell_dir, train_pairs, heldout_pairs, tokenizer)

    trainer = build_trainer(cell, cell_dir, model, tokenizer, train_pairs, heldout_pairs)
    checkpoint = last_checkpoint(cell_dir) if resume else None
    say(
        cell,
        f"start: {cell.objective} r={cell.rank} on {trainer.args.device}, "
        f"{len(train_pairs)} train / {len(heldout_pairs)} held-out pairs, "
        f"{'resuming ' + checkpoint if checkpoint else 'from scratch'} "
        f"(ready in {time.time() - started:.1f}s)",
    )
    trainer.train(resume_from_checkpoint=checkpoint)
    if trainer.state.global_step % cell.train.eval_every:  # the last step was not evaluated yet
        trainer.evaluate()
    say(cell, f"done: {trainer.state.global_step} steps in {time.time() - started:.1f}s")


def load_model(spec: ModelSettings):
    """The model in the cell's dtype and its tokenizer (with a pad token, which TRL's collators need)."""
    path = tiny_model_path() if spec.name == TINY_MODEL_NAME else spec.name
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=model_dtype(spec.dtype))
    return model, tokenizer


def model_dtype(dtype: str) -> torch.dtype:
    """auto: bf16 on a GPU that supports it, else fp32 (bf16 on a CPU is slow and TRL would pick it)."""
    if dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]


def write_data_stats(cell_dir: Path, train_pairs, heldout_pairs, tokenizer) -> None:
    rundir.write_json_atomic(
        cell_dir / rundir.DATA_FILE,
        {
            "train_pairs": len(train_pairs),
            "heldout_pairs": len(heldout_pairs),
            "train": length_stats(train_pairs, tokenizer),
            "heldout": length_stats(heldout_pairs, tokenizer),
        },
    )


def build_trainer(cell: CellSettings, cell_dir: Path, model, tokenizer, train_pairs, heldout_pairs):
    """The objective's TRL trainer, with the per-pair capture and prefwatch's callbacks attached."""
    params = cell.params()
    common = training_args(cell, cell_dir, model.dtype)
    if isinstance(params, DpoParams):
        trainer_class, args = (
            DPOPairTrainer,
            DPOConfig(**common, beta=params.beta, precompute_ref_log_probs=True),
        )  # one reference pass, not one per step
    elif isinstance(params, SimpoParams):
        trainer_class, args = (
            CPOPairTrainer,
            CPOConfig(
                **common,
                loss_type="simpo",
                cpo_alpha=params.sft_weight,  # TRL's behaviour-cloning term (its default 1.0)
                beta=params.beta,
                simpo_gamma=params.gamma,
            ),
        )
    else:
        trainer_class, args = ORPOPairTrainer, ORPOConfig(**common, beta=params.beta)
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(train_pairs),
        eval_dataset=datasets.Dataset.from_list(heldout_pairs),
        processing_class=tokenizer,
        peft_config=lora_config(cell),
        callbacks=[ProgressPrinter(cell)],
    )
    metrics = PrefwatchCallback(
        cell_dir / rundir.METRICS_FILE,
        completions=cell.train.completions,
        max_new_tokens=cell.train.completion_tokens,
    )
    if metrics.sampler is not None:  # TRL's processed held-out pairs: the prompt ids it tokenized
        metrics.sampler.choose(trainer.eval_dataset)
    trainer.add_callback(metrics)
    if len(trainer.eval_dataset) != len(heldout_pairs):  # pair ids are positions: every pair must be scored
        raise DataError(
            f"TRL dropped {len(heldout_pairs) - len(trainer.eval_dataset)} held-out pairs whose prompt "
            f"fills data.max_length={cell.data.max_length}; raise it or shorten those prompts"
        )
    trainer.remove_callback(PrinterCallback)  # prints raw dicts; ProgressPrinter prints one short line
    trainer.pair_log = PairLog(cell_dir / rundir.EVAL_PAIRS_FILE, len(heldout_pairs))
    trainer.best_adapter = BestAdapter(cell_dir)
    return trainer


def training_args(cell: CellSettings, cell_dir: Path, dtype: torch.dtype) -> dict[str, Any]:
    """Settings shared by the three objectives; TRL defaults that hurt small runs are overridden."""
    train = cell.train
    return dict(
        output_dir=str(cell_dir / rundir.CHECKPOINTS_DIR),
        seed=cell.seed,
        max_steps=train.max_steps,
        learning_rate=train.learning_rate,  # TRL's default 1e-6 barely moves a LoRA adapter
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=train.warmup_steps,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.eval_batch_size,
        gradient_accumulation_steps=train.grad_accum,
        eval_strategy="steps",
        eval_steps=train.eval_every,
        logging_steps=train.log_every,
        save_strategy="steps",
        save_steps=train.save_every,
        save_total_limit=2,
        max_length=cell.data.max_length,
        bf16=dtype == torch.bfloat16,  # TRL turns bf16 on when unset, even on a CPU
        fp16=dtype == torch.float16,
        report_to=train.report_to,  # cell.json may add trackers: "trackio", "mlflow", "wandb"
        run_name=cell.id,  # the trackers' run name: prefwatch reads the cell's labels back from it
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        **no_activation_checkpointing(),
    )


def no_activation_checkpointing() -> dict[str, bool]:
    """TRL turns checkpointing on by default: it costs time and saves nothing on small models.

    transformers 5 renamed the switch to activation_checkpointing (the old name still works, with a warning).
    """
    renamed = "activation_checkpointing" in TrainingArguments.__dataclass_fields__
    return {"activation_checkpointing" if renamed else "gradient_checkpointing": False}


def lora_config(cell: CellSettings) -> LoraConfig:
    lora = cell.lora
    return LoraConfig(
        r=cell.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )


def last_checkpoint(cell_dir: Path) -> str | None:
    folder = cell_dir / rundir.CHECKPOINTS_DIR
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


class ProgressPrinter(TrainerCallback):
    """One short stdout line per log event; the supervisor keeps stdout as the cell's stdout.log."""

    def __init__(self, cell: CellSettings):
        self.cell = cell

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        prefix = "eval_" if any(key.startswith("eval_") for key in logs) else ""
        shown = ("loss", "rewards/margins", "rewards/accuracies", "train_runtime")
        values = "  ".join(f"{key}={logs[prefix + key]:.4g}" for key in shown if prefix + key in logs)
        say(self.cell, f"step {state.global_step}/{state.max_steps} {'eval ' if prefix else ''}{values}")


def say(cell: CellSettings, message: str) -> None:
    print(f"[{cell.id}] {message}", flush=True)
