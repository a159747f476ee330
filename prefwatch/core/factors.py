"""A run's factors: the settings that tell one cell of a sweep from another, each with where it was read.

A sweep is rarely only objective × LoRA rank × seed: people sweep β, the learning rate, the batch size,
and put runs of other base models and data sets in the same folder. Each cell carries ``Factors``:
canonical names (``objective``, ``loss_type``, ``rank``, ``beta``, ``gamma``, ``lr``, ``seed``,
``model``, ``data``, ``heldout``, ``batch_size``, ``max_steps``, ``epochs``) and any other scalar key of
a recorded configuration, each value with its ``Origin`` (cell.json, a folder name, adapter_config.json,
TRL's trainer_state.json, a sibling training_args.json / config.yaml / all_results.json, TRL's model
card, MLflow params and tags, trackio's or W&B's config, the logs themselves).

Pure: parsing of names and of configuration mappings already read. Files are read by
``prefwatch.ingest.factors``.
"""

from __future__ import annotations

import enum
import hashlib
import math
import re
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import msgspec

Scalar = str | int | float | bool
T = TypeVar("T")


class Origin(enum.StrEnum):
    """Where a factor was read, in the order they win: a launched cell's record, a user's label, the
    records a run wrote (configs, trainer state, model card, trackers), then names; ``LOGS`` and
    ``EVALUATIONS`` are read from the logged numbers (the objective, the held-out set)."""

    CELL = "cell.json"
    LABEL = "--label"
    ADAPTER_CONFIG = "adapter_config.json"
    TRAINER_STATE = "trainer_state.json"
    TRAINING_ARGS = "training_args.json"
    CONFIG_YAML = "config.yaml"
    ALL_RESULTS = "all_results.json"
    MODEL_CARD = "model card"
    MLFLOW_PARAMS = "MLflow params"
    MLFLOW_TAGS = "MLflow tags"
    TRACKIO_CONFIG = "trackio config"
    WANDB_CONFIG = "W&B config"
    FOLDER_NAME = "folder name"
    RUN_NAME = "run name"
    LOGS = "logs"
    EVALUATIONS = "evaluations"


# Which place wins when two give one factor: the enum's order (records of the run, then names).
_PRIORITY = {origin: index for index, origin in enumerate(Origin)}


class Value(msgspec.Struct, frozen=True):
    """One factor's value and where it was read (``detail``: the file or the key, when it says more)."""

    value: Scalar
    origin: Origin
    detail: str | None = None

    @property
    def where(self) -> str:
        return f"{self.origin} ({self.detail})" if self.detail and self.detail != str(self.origin) else str(self.origin)


class Factors(msgspec.Struct):
    """A cell's factors by name. Where two places give one factor, the earlier ``Origin`` wins (a record of
    the run before a name); between places of one rank, the first value given."""

    values: dict[str, Value] = msgspec.field(default_factory=dict)

    def get(self, name: str) -> Scalar | None:
        found = self.values.get(name)
        return None if found is None else found.value

    def origin(self, name: str) -> Origin | None:
        found = self.values.get(name)
        return None if found is None else found.origin

    def add(self, name: str, value: Any, origin: Origin, detail: str | None = None) -> None:
        scalar = scalar_value(value)
        found = self.values.get(name)
        if scalar is not None and (found is None or _PRIORITY[origin] < _PRIORITY[found.origin]):
            self.values[name] = Value(scalar, origin, detail)

    def put(self, name: str, value: Any, origin: Origin, detail: str | None = None) -> None:
        """Replace what was read (a user's label, the logs' objective)."""
        scalar = scalar_value(value)
        if scalar is not None:
            self.values[name] = Value(scalar, origin, detail)

    def update(self, other: Factors) -> None:
        """Add ``other``'s factors that this set does not hold yet."""
        for name, value in other.values.items():
            self.values.setdefault(name, value)


# ---- canonical names ----------------------------------------------------------------------------

OBJECTIVE, LOSS_TYPE, RANK, BETA, GAMMA, LR, SEED = "objective", "loss_type", "rank", "beta", "gamma", "lr", "seed"
MODEL, DATA, HELDOUT, BATCH_SIZE, MAX_STEPS, EPOCHS = "model", "data", "heldout", "batch_size", "max_steps", "epochs"
# The order a reader reads a sweep in (the report's columns, the overview's grouping cycle).
ORDER = (OBJECTIVE, LOSS_TYPE, RANK, BETA, GAMMA, LR, BATCH_SIZE, MAX_STEPS, EPOCHS, MODEL, DATA, HELDOUT, SEED)
# β's and γ's scale, and the loss type, belong to the objective (DPO's β 0.1 is SimPO's 2.0): they are
# compared between cells of one objective only.
OBJECTIVE_BOUND = frozenset({BETA, GAMMA, LOSS_TYPE})
# Runs of different base models or data sets are not one grid.
GRID_BOUND = (MODEL, DATA)
# Settings without which two seeded runs cannot be called replicates from their records alone: when one
# is unknown, their folder names must also look like one sweep (``sweep_stem``).
CORE = (LR, MODEL, DATA)
SYMBOLS = {BETA: "β", GAMMA: "γ", RANK: "r"}

# ---- names: folder and run names ----------------------------------------------------------------

# A number as people write it in names: 5e-5, 1.1e-05, 0.1, .1, 0p1 (p for the point), 16.
_NUMBER = r"(?:\d+(?:[.p]\d+)?|\.\d+)(?:e[-+]?\d+)?"
# Tokens of a name and the factor each gives (longer first: ``bs`` before ``b``); a token starts the
# name or follows a separator, so the ``b`` of ``2b`` (a model size) is never β.
_NAME_KEYS = {
    "learning_rate": LR,
    "learningrate": LR,
    "lora_r": RANK,
    "rank": RANK,
    "gamma": GAMMA,
    "beta": BETA,
    "seed": SEED,
    "lr": LR,
    "bs": BATCH_SIZE,
    "b": BETA,
    "r": RANK,
}
_NAME_TOKEN = re.compile(
    rf"(?<![a-z0-9])({'|'.join(_NAME_KEYS)})[-_=: ]?({_NUMBER})(?![a-z0-9])",
    re.IGNORECASE,
)
_WHOLE = frozenset({RANK, SEED, BATCH_SIZE})


def name_factors(name: str) -> dict[str, int | float]:
    """The factors a folder or run name states: ``lr1.1e-05``, ``beta0.2``, ``b0.1``, ``seed3``,
    ``seed-3``, ``r16``, ``rank_16``, ``bs8``; the first of each kind counts.

    >>> name_factors("gemma-2-2b-lr1.1e-05-beta0.2-20250301-0424")
    {'lr': 1.1e-05, 'beta': 0.2}
    >>> name_factors("dpo-r8-b0.1-lr5e-05-seed1")
    {'rank': 8, 'beta': 0.1, 'lr': 5e-05, 'seed': 1}
    """
    found: dict[str, int | float] = {}
    for match in _NAME_TOKEN.finditer(name):
        factor = _NAME_KEYS[match.group(1).lower()]
        text = match.group(2).lower().replace("p", ".")
        if factor in found:
            continue
        if factor in _WHOLE:
            if not text.isdigit():
                continue
            found[factor] = int(text)
        else:
            try:
                number = float(text)
            except ValueError:
                continue
            if math.isfinite(number):
                found[factor] = number
    return found


_SEED_TOKEN = re.compile(r"(?<![a-z0-9])seed[-_=: ]?\d+(?![a-z0-9])", re.IGNORECASE)
_STAMP = re.compile(r"\d{6,}")


def sweep_stem(name: str) -> str:
    """A name without its seed token and time stamps: runs of one sweep that differ only by seed share it.

    >>> sweep_stem("dpo-r8-seed1-20250301") == sweep_stem("dpo-r8-seed2-20250302")
    True
    """
    return _STAMP.sub("#", _SEED_TOKEN.sub("seed#", name)).lower()


# ---- recorded configurations: TrainingArguments, TRL configs, YAML recipes, trackers' params ----

# Keys of recorded configurations and the factor each is.
CONFIG_KEYS = {
    "learning_rate": LR,
    "lr": LR,
    "beta": BETA,
    "pref_beta": BETA,
    "dpo_beta": BETA,
    "orpo_beta": BETA,
    "simpo_gamma": GAMMA,
    "gamma_beta_ratio": GAMMA,
    "seed": SEED,
    "loss_type": LOSS_TYPE,
    "pref_loss": LOSS_TYPE,
    "lora_r": RANK,
    "lora_rank": RANK,
    "model_name_or_path": MODEL,
    "base_model": MODEL,
    "base_model_name_or_path": MODEL,
    "_name_or_path": MODEL,
    "dataset": DATA,
    "dataset_name": DATA,
    "datasets": DATA,
    "data_path": DATA,
    "per_device_train_batch_size": BATCH_SIZE,
    "train_batch_size": BATCH_SIZE,
    "batch_size": BATCH_SIZE,
    "max_steps": MAX_STEPS,
    "num_train_epochs": EPOCHS,
    "eval_samples": HELDOUT,
}
# Keys that name where a run wrote or logged, or who ran it: never a setting of the training.
_IDENTITY = re.compile(
    r"(^_|dir$|_dir|path|file|^output|name$|^run|^logging|hub|token|url|report_to|^push|wandb|mlflow|trackio|"
    r"^resume|time|date|^local_rank$|^n_gpu$|device|project|entity|^tags?$|^notes?$|_id$|^id$|^job|host|"
    r"^runtime|_runtime$|per_second$|^total_flos$|^train_loss$|^eval_|^epoch$|^step$|^global_step$)",
    re.IGNORECASE,
)
# Longest text kept as an "other" setting (a model's chat template is no setting).
_MAX_TEXT = 60


def scalar_value(value: Any) -> Scalar | None:
    """A number, a flag or a short text as a factor's value; text that reads as a number (MLflow keeps
    every param as text: ``"5e-05"``) becomes that number; None, ``"None"``, NaN and containers are no value."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text or text in ("None", "null") or len(text) > _MAX_TEXT:
        return None
    if text in ("True", "true", "False", "false"):
        return text.lower() == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else None


def config_factors(config: Mapping[str, Any], origin: Origin, into: Factors | None = None) -> Factors:
    """The factors of a recorded configuration (flat keys; PEFT's rank inside ``peft_config``): known
    keys under their canonical names, any other scalar setting under its own key."""
    factors = Factors() if into is None else into
    for key, value in config.items():
        if not isinstance(key, str):
            continue
        name = CONFIG_KEYS.get(key)
        if name in _WHOLE_MINIMUM:
            value = _whole(value, _WHOLE_MINIMUM[name])
        if name == DATA and isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value) if all(isinstance(v, str) for v in value) else None
        if name is not None:
            factors.add(name, value, origin, key)
        elif key == "peft_config":
            rank = peft_rank(value)
            if rank is not None:
                factors.add(RANK, rank, origin, "peft_config")
        elif not _IDENTITY.search(key):
            factors.add(key, value, origin, key)
    return factors


# Factors that are whole numbers, with their least meaningful value (TrainingArguments' max_steps -1 means none).
_WHOLE_MINIMUM = {RANK: 1, SEED: 0, BATCH_SIZE: 1, MAX_STEPS: 1, HELDOUT: 1}


def _whole(value: Any, minimum: int) -> int | None:
    number = scalar_value(value)
    if isinstance(number, float) and number.is_integer():
        number = int(number)
    if isinstance(number, bool) or not isinstance(number, int) or number < minimum:
        return None
    return number


def peft_rank(peft_config: Any) -> int | None:
    """``r`` of PEFT's config as trackers log it: {"default": {"r": 16, ...}}, {"r": 16, ...} or its repr."""
    if isinstance(peft_config, str):
        match = re.search(r"['\"]?\br['\"]?\s*[:=]\s*(\d+)", peft_config)
        return int(match.group(1)) if match else None
    if not isinstance(peft_config, Mapping):
        return None
    r = peft_config.get("r")
    if isinstance(r, int) and not isinstance(r, bool) and r > 0:
        return r
    return (
        next((found for v in peft_config.values() if (found := peft_rank(v)) is not None), None)
        if any(isinstance(v, Mapping) for v in peft_config.values())
        else None
    )


# ---- sweeps: what varies, settings and replicates -----------------------------------------------


def text(name: str, value: Scalar | None) -> str:
    """A factor's value as the report writes it: r=16, β=0.1, lr=5e-05, model=…"""
    if value is None:
        shown = "?"
    elif isinstance(value, float):
        shown = f"{value:g}"
    else:
        shown = str(value)
    if name == RANK:
        return f"r={shown}"
    return f"{SYMBOLS.get(name, name)}={shown}"


def label(name: str) -> str:
    """A factor's name as the report writes it: β, γ, learning rate; other keys as they are."""
    return _LABELS.get(name, name)


_LABELS = {
    BETA: "β",
    GAMMA: "γ",
    LR: "learning rate",
    BATCH_SIZE: "batch size",
    MAX_STEPS: "max steps",
    HELDOUT: "held-out set",
}


def level_text(name: str, value: Scalar | None) -> str:
    return "?" if value is None else (f"{value:g}" if isinstance(value, float) else str(value))


def setting_name(factors: Factors, names: Sequence[str]) -> str:
    """A setting in words: its objective and rank, then the other factors of ``names`` (``dpo r=8 β=0.1``)."""
    objective, rank = factors.get(OBJECTIVE), factors.get(RANK)
    parts = [str(objective) if objective is not None else None, text(RANK, rank) if rank is not None else None]
    parts += [text(name, factors.get(name)) for name in names if name not in (OBJECTIVE, RANK)]
    return " ".join(p for p in parts if p)


def varying(factor_sets: Sequence[Factors], skip: Iterable[str] = (SEED,)) -> list[str]:
    """Factors with two or more known values across the cells, in reading order (unknown is not a value)."""
    skipped = set(skip)
    seen: dict[str, set[Any]] = {}
    for factors in factor_sets:
        for name, value in factors.values.items():
            if name not in skipped:
                seen.setdefault(name, set()).add(_comparable(value.value))
    names = [name for name, values in seen.items() if len(values) > 1]
    order = {name: i for i, name in enumerate(ORDER)}
    return sorted(names, key=lambda n: (order.get(n, len(order)), n))


def _comparable(value: Scalar) -> Any:
    """Values compared as equal when they are: model ids by their last part, lowercased (a local copy of
    ``google/gemma-2-2b`` is the same model); floats to 9 significant digits."""
    if isinstance(value, float):
        return float(f"{value:.9g}")
    if isinstance(value, str):
        return value.rstrip("/").rsplit("/", 1)[-1].lower()
    return value


def comparable(factors: Factors, name: str) -> Any:
    value = factors.get(name)
    return None if value is None else _comparable(value)


def setting_key(cell_id: str, factors: Factors) -> tuple[Any, ...]:
    """Cells with equal keys are one setting: every factor but the seed (and the held-out set, which
    comparability handles) equal; where the seed is known from a name only and the records leave a core
    setting unknown, their names must also look like one sweep. A cell whose seed is unknown is a
    setting of its own: it is nobody's replicate."""
    if factors.get(SEED) is None:
        return (("cell", cell_id),)
    items = tuple(
        sorted((name, _comparable(v.value)) for name, v in factors.values.items() if name not in (SEED, HELDOUT))
    )
    named = factors.origin(SEED) in (Origin.FOLDER_NAME, Origin.RUN_NAME)
    if named and any(factors.get(name) is None for name in CORE):
        items += (("sweep", sweep_stem(cell_id)),)
    return items


def replicates(items: Sequence[T], key: Callable[[T], Hashable], seed: Callable[[T], Any]) -> list[list[T]]:
    """Items grouped by setting, in first-seen order; a group is one setting's seeds only when its seeds
    differ (two runs of one seed are reruns, not replicates: each then stands alone)."""
    groups: dict[Hashable, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    out: list[list[T]] = []
    for members in groups.values():
        seeds = [seed(m) for m in members]
        if len(members) > 1 and None not in seeds and len(set(seeds)) == len(seeds):
            out.append(members)
        else:
            out.extend([m] for m in members)
    return out


def pair_ids_digest(pair_ids: Sequence[str]) -> str | None:
    """A short fingerprint of the held-out pairs' ids (cells judged on the same pairs share it)."""
    if not pair_ids:
        return None
    digest = hashlib.blake2b(digest_size=8)
    for pair in pair_ids:
        digest.update(pair.encode("utf-8", "replace") + b"\0")
    return digest.hexdigest()


class HeldoutSet(msgspec.Struct, frozen=True):
    """The held-out pairs a cell was judged on: their number and, where per-pair results exist, a
    fingerprint of their ids. Pair counts are compared only between cells of one held-out set."""

    size: int | None
    pairs: str | None = None

    def same_as(self, other: HeldoutSet) -> bool:
        """Same size, and the same pairs where both cells have per-pair results."""
        if self.size is None or self.size != other.size:
            return False
        return self.pairs is None or other.pairs is None or self.pairs == other.pairs

    @property
    def label(self) -> str:
        return f"{self.size} held-out pairs" if self.size is not None else "held-out size unknown"
