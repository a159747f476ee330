"""The factors written in and beside a run's folder, in a launched cell's cell.json and in a tracker's run.

Read once when a cell is opened (``trainer_state.json``'s, as its reader re-reads it): a run's own
records first, its name last (``prefwatch.core.factors`` says which place wins). Every file is read only
when it is a regular file of at most ``MAX_BYTES``; one that cannot be read is named in the cell's
``factor_problems`` (one line each), never a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefwatch.core.factors import (
    BATCH_SIZE,
    BETA,
    DATA,
    EPOCHS,
    GAMMA,
    HELDOUT,
    LR,
    MAX_STEPS,
    MODEL,
    RANK,
    SEED,
    Factors,
    Origin,
    config_factors,
    name_factors,
)
from prefwatch.files import rundir, safe

# A configuration file beside a run larger than this is not a configuration.
MAX_BYTES = 1 << 20
ADAPTER_CONFIG = "adapter_config.json"
# Siblings of trainer_state.json that record a run's settings, and what each is.
SIBLINGS = (
    ("training_args.json", Origin.TRAINING_ARGS),
    ("config.yaml", Origin.CONFIG_YAML),
    ("config.yml", Origin.CONFIG_YAML),
    ("all_results.json", Origin.ALL_RESULTS),
)
MODEL_CARD = "README.md"


def folder_factors(path: Path, name: str | None = None, problems: list[str] | None = None) -> Factors:
    """The factors of a run folder: adapter_config.json, training_args.json, config.yaml and
    all_results.json (in the folder or its newest checkpoint), TRL's model card (README.md: ``base_model``,
    ``datasets``), then the folder's name (``name`` when the cell is named otherwise)."""
    factors = Factors()
    problems = [] if problems is None else problems
    places = [path, *_checkpoints(path)]
    for adapter in (p / ADAPTER_CONFIG for p in places):
        config = _json(adapter, path, problems)
        if config is not None:
            detail = adapter.relative_to(path).as_posix()
            rank = config.get("r")
            if isinstance(rank, int) and not isinstance(rank, bool) and rank > 0:
                factors.add(RANK, rank, Origin.ADAPTER_CONFIG, detail)
            factors.add(MODEL, config.get("base_model_name_or_path"), Origin.ADAPTER_CONFIG, detail)
            factors.add("lora_alpha", config.get("lora_alpha"), Origin.ADAPTER_CONFIG, detail)
            if RANK in factors.values:
                break
    for file_name, origin in SIBLINGS:
        for folder in places:
            file = folder / file_name
            config = _yaml(file, path, problems) if file.suffix in (".yaml", ".yml") else _json(file, path, problems)
            if config is not None:
                config_factors(config, origin, factors)
                break
    card = _front_matter(path / MODEL_CARD)
    factors.add(MODEL, card.get("base_model"), Origin.MODEL_CARD, MODEL_CARD)
    factors.add(DATA, card.get("datasets"), Origin.MODEL_CARD, MODEL_CARD)
    add_name(factors, name or path.name, Origin.FOLDER_NAME)
    return factors


def add_name(factors: Factors, name: str, origin: Origin) -> None:
    for factor, value in name_factors(name).items():
        factors.add(factor, value, origin)


# What a cell.json says of each factor: the factor, and the key that holds it.
CELL_FACTORS = (
    (RANK, "rank"),
    (SEED, "seed"),
    (BETA, "objective_params.beta"),
    (GAMMA, "objective_params.gamma"),
    (LR, "train.learning_rate"),
    (BATCH_SIZE, "train.batch_size"),
    (MAX_STEPS, "train.max_steps"),
    *((key, f"train.{key}") for key in ("grad_accum", "lr_scheduler", "warmup_steps")),
    (MODEL, "model.name"),
    (DATA, "data.name"),
)


def cell_record_factors(record: rundir.CellRecord) -> Factors:
    """A launched cell's settings as the launcher resolved them (cell.json): what the file says."""
    factors = Factors()
    cell = Origin.CELL
    for factor, key in CELL_FACTORS:
        factors.add(factor, record.says(key), cell, key)
    heldout = record.says("data.heldout")
    if heldout is not None:
        factors.add(
            "heldout_share" if isinstance(heldout, (int, float)) else "heldout_file", heldout, cell, "data.heldout"
        )
    for factor, key in (("split_seed", "data.seed"), ("lora_alpha", "lora.alpha"), ("lora_dropout", "lora.dropout")):
        factors.add(factor, record.says(key), cell, key)
    return factors


def trainer_state_factors(state: Mapping[str, Any], factors: Factors) -> None:
    """What TRL's trainer_state.json records of the run's settings: a hyperparameter search's
    ``trial_params``, ``train_batch_size``, ``max_steps`` and ``num_train_epochs``."""
    trial = state.get("trial_params")
    if isinstance(trial, Mapping):
        config_factors(trial, Origin.TRAINER_STATE, factors)
    for key, factor in (("train_batch_size", BATCH_SIZE), ("max_steps", MAX_STEPS), ("num_train_epochs", EPOCHS)):
        value = state.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            factors.add(factor, value, Origin.TRAINER_STATE, key)


def tracker_factors(config: Mapping[str, Any], run_name: str, origin: Origin) -> Factors:
    """A tracker run's factors: its logged config (MLflow params, trackio or W&B config), then its name."""
    factors = config_factors(config, origin)
    add_name(factors, run_name, Origin.RUN_NAME)
    return factors


def heldout_size(factors: Factors) -> int | None:
    value = factors.get(HELDOUT)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# ---- files ----------------------------------------------------------------------------------------


def _checkpoints(path: Path) -> list[Path]:
    """A run's checkpoint folders, newest (highest step) first."""
    found = []
    for folder in path.glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", folder.name)
        if match and folder.is_dir():
            found.append((int(match.group(1)), folder))
    return [folder for _, folder in sorted(found, reverse=True)]


def _readable(file: Path, problems: list[str]) -> bool:
    if not file.exists():
        return False
    if not file.is_file():  # a folder or a named pipe in its place: never opened (a pipe would block)
        problems.append(f"{file}: not a regular file (ignored)")
        return False
    if file.stat().st_size > MAX_BYTES:
        problems.append(f"{file}: larger than {MAX_BYTES >> 20} MiB: not a configuration (ignored)")
        return False
    return True


def _json(file: Path, root: Path, problems: list[str]) -> dict[str, Any] | None:
    try:
        if not _readable(file, problems):
            return None
    except OSError:
        return None
    config = rundir.read_json(file, limit=MAX_BYTES)
    if config is None:
        problems.append(f"{file}: not a JSON object (ignored)")
    return config


_YAML_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_.-]*)\s*:\s*(.*?)\s*$")


def _yaml(file: Path, root: Path, problems: list[str]) -> dict[str, Any] | None:
    """The top-level ``key: value`` lines of a YAML recipe (LLaMA-Factory, Axolotl); nested blocks,
    lists and anchors are not settings prefwatch compares, and are left out."""
    try:
        if not _readable(file, problems):
            return None
        text = safe.read_text(file, errors="replace")
    except OSError:
        return None
    return _flat_yaml(text)


def _flat_yaml(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for line in text.splitlines():
        match = _YAML_LINE.match(line)
        if not match:
            continue
        key, value = match.groups()
        value = re.sub(r"\s+#.*$", "", value)
        if not value or value[0] in "[{&*|>":
            continue
        out[key] = value.strip().strip("'\"")
    return out


def _front_matter(file: Path) -> dict[str, Any]:
    """The flat keys of a model card's YAML front matter (TRL writes ``base_model`` and ``datasets``)."""
    try:
        if not file.is_file() or file.stat().st_size > MAX_BYTES:
            return {}
        with safe.open_read(file) as f:
            head = f.read(16384).decode("utf-8", errors="replace")
    except OSError:
        return {}
    if not head.startswith("---"):
        return {}
    end = head.find("\n---", 3)
    return _flat_yaml(head[3:end]) if end > 0 else {}
