"""The settings of a grid and of one cell, typed: one msgspec Struct per table of grid.toml, and the cell
record (cell.json) that the launcher writes and the trainer and the monitor read.

Each key is declared once, here: its type, its default, its constraints (``msgspec.Meta``: bounds, a
pattern, a minimum length; a ``Literal`` for a choice) and the comment ``prefwatch init`` writes beside
it (the Meta's description). msgspec checks the constraints when a grid file or a cell.json is
converted; ``explain`` turns what it rejected into the words the user reads (``must be > 0, got -3``),
from the same annotations. Two keys of ``Meta.extra`` say it better where the general words would not:
``expect`` (what the whole value must be) and ``error`` (the message for a value of the right kind that
breaks a constraint; ``{value}``, ``{suggest}`` and ``{choices}`` are filled in).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Annotated, Literal, get_args

import msgspec
from msgspec import Meta, Struct, field
from msgspec import inspect as mi

EMBEDDED_MODEL = "tiny"
EMBEDDED_DATA = "tiny-sales"
# The same sales pairs with the chosen reply always the shorter one (a brevity-biased split: length is learnable).
EMBEDDED_DATA_SHORT = "tiny-sales-short"
EMBEDDED_DATA_SETS = (EMBEDDED_DATA, EMBEDDED_DATA_SHORT)


def doc(text: str) -> Meta:
    """The comment ``init`` writes beside a key."""
    return Meta(description=text)


PositiveInt = Annotated[int, Meta(gt=0)]
Count = Annotated[int, Meta(ge=0)]
PositiveFloat = Annotated[float, Meta(gt=0)]
NonNegativeFloat = Annotated[float, Meta(ge=0)]
Text = Annotated[str, Meta(min_length=1)]

Objective = Literal["dpo", "simpo", "orpo"]
OBJECTIVES: tuple[str, ...] = get_args(Objective)
StopReason = Literal["non_finite", "frozen", "overoptimization"]
STOP_REASONS: tuple[str, ...] = get_args(StopReason)

# Seeds go to numpy, which takes 0..2^32-1: any other makes every cell fail as it starts.
Seed = Annotated[int, Meta(ge=0, lt=1 << 32, extra={"error": f"a seed must be in 0..{(1 << 32) - 1}, got {{value}}"})]
Rank = Annotated[int, Meta(gt=0, extra={"error": "a LoRA rank must be > 0, got {value}"})]
SweptValue = Annotated[float, Meta(gt=0, extra={"error": "every value must be > 0, got {value:g}"})]
SLURM_MEM = r"^[0-9]+[KMGT]?\Z"
SLURM_TIME = (
    r"^(?:[0-9]+|[0-9]+:[0-9]{1,2}(?::[0-9]{1,2})?|[0-9]+-[0-9]{1,2}(?::[0-9]{1,2}(?::[0-9]{1,2})?)?|UNLIMITED)\Z"
)


class ModelSettings(Struct, kw_only=True):
    """[model]: the model every cell tunes."""

    name: Annotated[Text, doc('"tiny" (embedded), a Hugging Face id or a local path')] = EMBEDDED_MODEL
    dtype: Annotated[Literal["auto", "bf16", "fp16", "fp32"], doc("auto: bf16 on GPUs that support it, else fp32")] = (
        "auto"
    )


class DataSettings(Struct, kw_only=True):
    """[data]: the preference pairs and the held-out share every cell is judged on."""

    name: Annotated[
        Text, doc('"tiny-sales" (embedded; "tiny-sales-short": chosen always shorter), a JSONL file or a data set id')
    ] = EMBEDDED_DATA
    heldout: Annotated[
        Annotated[float, Meta(gt=0, lt=1, extra={"error": "a held-out fraction must be in (0, 1), got {value}"})]
        | Text,
        Meta(
            description="held-out share, or a JSONL file; every cell is judged on the same pairs",
            extra={"expect": "a fraction in (0, 1) or a path to a JSONL file"},
        ),
    ] = 0.2
    max_length: PositiveInt = 128
    seed: int = 1234


class Optimisation(Struct, kw_only=True):
    """The [train] keys every cell uses (the grid's [train] adds its seeds, a cell.json its trackers)."""

    max_steps: PositiveInt = 100
    learning_rate: PositiveFloat = 5e-4
    batch_size: PositiveInt = 8
    eval_batch_size: Annotated[PositiveInt, doc("divides the 100 held-out pairs of the tiny data")] = 10
    grad_accum: PositiveInt = 1
    eval_every: PositiveInt = 10
    log_every: PositiveInt = 1
    save_every: PositiveInt = 50
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: Count = 0
    completions: Annotated[
        Count, doc("held-out prompts answered (greedy) at each evaluation: what the model writes; 0: none")
    ] = 8
    completion_tokens: Annotated[PositiveInt, doc("max_new_tokens of those answers")] = 64


class TrainSettings(Optimisation, kw_only=True):
    """[train]: the optimisation, shared by every cell."""

    seeds: Annotated[
        list[Seed],
        Meta(min_length=1, description="add seeds to see whether a difference is larger than the spread across runs"),
    ] = field(default_factory=lambda: [0])


class GridAxes(Struct, kw_only=True):
    """[grid]: the axes whose product is the grid's cells."""

    objectives: Annotated[
        list[Annotated[Objective, Meta(extra={"error": "unknown objective {value!r}{suggest}"})]], Meta(min_length=1)
    ] = field(default_factory=lambda: ["dpo", "simpo"])
    ranks: Annotated[list[Rank], Meta(min_length=1)] = field(default_factory=lambda: [16, 8])
    betas: Annotated[list[SweptValue], doc("a sweep over the objective's beta (empty: its table's)")] = field(
        default_factory=list
    )
    learning_rates: Annotated[list[SweptValue], doc("a sweep over [train] learning_rate (empty: that)")] = field(
        default_factory=list
    )


class LoraSettings(Struct, kw_only=True):
    """[lora]: the adapter every cell trains (its rank is a grid axis)."""

    alpha: PositiveInt = 32
    dropout: Annotated[float, Meta(ge=0, lt=1)] = 0.0
    target_modules: Annotated[
        Text | Annotated[list[Text], Meta(min_length=1)],
        Meta(extra={"expect": "a string or a non-empty list of strings"}),
    ] = "all-linear"


class ResourcesSettings(Struct, kw_only=True):
    """[resources]: where cells run (kept in the run directory's resources.json)."""

    devices: Annotated[
        Literal["auto", "cpu"] | Annotated[list[Count], Meta(min_length=1)],
        Meta(
            description='"auto": the visible GPUs, else the CPU; "cpu"; or a list of GPU indices',
            extra={"expect": '"auto", "cpu" or a list of GPU indices'},
        ),
    ] = "auto"
    cells_per_device: PositiveInt = 1
    max_parallel: Annotated[Count, doc("0: as many as there are slots")] = 0
    threads_per_cell: PositiveInt = 1
    backend: Literal["local", "slurm"] = "local"


class SlurmSettings(Struct, kw_only=True):
    """[slurm]: read only with [resources] backend = "slurm": each cell becomes one sbatch job."""

    partition: Text | None = None
    gpus_per_cell: Count = 0
    cpus_per_cell: Annotated[Count, doc("0: threads_per_cell")] = 0
    mem: (
        Annotated[
            str,
            Meta(pattern=SLURM_MEM, extra={"error": "must be a Slurm memory size like 16G or 4000M, got {value!r}"}),
        ]
        | None
    ) = None
    time: (
        Annotated[
            str,
            Meta(
                pattern=SLURM_TIME,
                extra={
                    "error": 'must be a Slurm time limit like "02:00:00", "90" (minutes) or "1-12:00:00", got {value!r}'
                },
            ),
        ]
        | None
    ) = None
    account: Text | None = None
    options: list[str] = field(default_factory=list)  # checked by the grid's validator (sbatch's own options)


class AlertSettings(Struct, kw_only=True):
    """[alerts]: where findings, cell ends and the verdict go with no monitor open (prefwatch.act.alerts)."""

    # The value is never echoed in a message: a webhook URL carries its secret in its path.
    webhook: (
        Annotated[
            str,
            Meta(
                pattern=r"^https?://",
                description="a Slack or Discord incoming-webhook URL",
                extra={"error": "must be an http(s) URL (Slack or Discord incoming webhook)"},
            ),
        ]
        | None
    ) = None
    command: Annotated[list[str], doc('an argument list, no shell: ["notify-send", "prefwatch"]')] = field(
        default_factory=list
    )
    min_interval: Annotated[NonNegativeFloat, doc("seconds between two messages")] = 10.0


class PolicySettings(Struct, kw_only=True):
    """[policy]: findings that stop a running cell (prefwatch.act.policy)."""

    stop_on: Annotated[
        list[Annotated[StopReason, Meta(extra={"error": "unknown reason {value!r}{suggest}; one of {choices}"})]],
        doc('"non_finite" (diverged); add "frozen", "overoptimization"'),
    ] = field(default_factory=lambda: ["non_finite"])
    patience: Annotated[PositiveInt, doc("with overoptimization: evaluations past the best held-out accuracy")] = 3


class DpoParams(Struct, kw_only=True):
    """[objectives.dpo]"""

    beta: PositiveFloat = 0.1


class SimpoParams(Struct, kw_only=True):
    """[objectives.simpo]: SimPO's reward is beta x the mean token log-prob, so its beta is larger than DPO's."""

    beta: PositiveFloat = 2.0
    gamma: Annotated[NonNegativeFloat, doc("target margin")] = 1.0
    sft_weight: Annotated[
        NonNegativeFloat, doc("weight of an NLL term on the chosen answers (CPO-SimPO; 0: plain SimPO)")
    ] = 0.0


class OrpoParams(Struct, kw_only=True):
    """[objectives.orpo]"""

    beta: PositiveFloat = 0.1


ObjectiveSettings = DpoParams | SimpoParams | OrpoParams


class ObjectiveTables(Struct, kw_only=True):
    """[objectives.*]: each objective's own parameters."""

    dpo: DpoParams = field(default_factory=DpoParams)
    simpo: SimpoParams = field(default_factory=SimpoParams)
    orpo: OrpoParams = field(default_factory=OrpoParams)

    def of(self, objective: str) -> ObjectiveSettings:
        value: ObjectiveSettings = getattr(self, objective)
        return value


class Settings(Struct, kw_only=True):
    """Every table of a grid, validated and typed: the one value launcher, supervisor and backends read.
    ``Settings()`` is what a grid file that sets nothing means."""

    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    grid: GridAxes = field(default_factory=GridAxes)
    lora: LoraSettings = field(default_factory=LoraSettings)
    resources: ResourcesSettings = field(default_factory=ResourcesSettings)
    slurm: SlurmSettings = field(default_factory=SlurmSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    objectives: ObjectiveTables = field(default_factory=ObjectiveTables)


# ---------------------------------------------------------------------------------------------
# cell.json: one cell's settings, resolved by the launcher; read by the trainer and the monitor


class CellData(DataSettings, kw_only=True):
    split: Text = "train"  # which split of a data set id the pairs come from (not a grid key)


class CellTrain(Optimisation, kw_only=True):
    # Trackers TRL reports to besides prefwatch's own files ("trackio", "mlflow", "wandb"; not a grid key).
    report_to: str | list[str] = "none"


class ObjectiveParams(Struct, kw_only=True, omit_defaults=True):
    """The cell's objective parameters: those its objective takes (the others are left out)."""

    beta: PositiveFloat | None = None
    gamma: NonNegativeFloat | None = None
    sft_weight: NonNegativeFloat | None = None


class CellSettings(Struct, kw_only=True):
    """cell.json: every setting of one cell. The launcher writes them all; a hand-written cell.json may
    leave any out and gets what a grid file that sets nothing gives (the first cell of ``Settings()``).

    ``objective`` reads as any string (the monitor shows a cell's claim literally), and the cell's labels
    may be null (unknown to whoever wrote the file); the trainer refuses either."""

    id: str | None = None  # the cell folder's name when missing
    index: int | None = None
    grid: str | None = None
    objective: str | None = "dpo"
    rank: PositiveInt | None = 16
    seed: int | None = 0
    model: ModelSettings = field(default_factory=ModelSettings)
    data: CellData = field(default_factory=CellData)
    train: CellTrain = field(default_factory=CellTrain)
    objective_params: ObjectiveParams = field(default_factory=ObjectiveParams)
    lora: LoraSettings = field(default_factory=LoraSettings)
    threads: PositiveInt = 1

    def params(self) -> ObjectiveSettings:
        """The objective's parameters: the cell's, else the objective's defaults."""
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective {self.objective!r} is not one of {', '.join(OBJECTIVES)}")
        defaults = ObjectiveTables().of(self.objective)
        given = {k: getattr(self.objective_params, k) for k in defaults.__struct_fields__}
        return msgspec.structs.replace(defaults, **{k: v for k, v in given.items() if v is not None})


# ---------------------------------------------------------------------------------------------
# What msgspec rejected, in words


def docs(cls: type[Struct]) -> dict[str, str]:
    """The comment ``init`` writes beside each key of a table ("" where it has none)."""
    fields = _struct(mi.type_info(cls)).fields
    return {f.name: str(_unwrap(f.type)[0].get("description") or "") for f in fields}


def explain(error: msgspec.ValidationError, raw: object, root: type[Struct]) -> tuple[list[str], str]:
    """Where ``error`` (from converting ``raw`` to ``root``) points, as the keys from the root down, and
    what is wrong there, as one phrase: ``(["train", "max_steps"], "must be > 0, got 0")``."""
    match = re.search(r" - at `\$(.*)`$", str(error))
    path = re.findall(r"\.([^.\[]+)|\[(\d+)\]", match.group(1) if match else "")
    info: mi.Type = mi.type_info(root)
    value, keys, index = raw, [], None
    for key, position in path:
        if position:
            index = int(position)
            break
        found = next((f.type for f in _struct(info).fields if f.encode_name == key), None)
        if found is None:  # not a field (msgspec names only fields): say what the table must be
            break
        info, value = found, value.get(key) if isinstance(value, dict) else None
        keys.append(key)
    return keys, problem(info, value, index)


def problem(info: mi.Type, value: object, index: int | None = None) -> str:
    """What is wrong with ``value`` where ``info`` (a msgspec.inspect type) is expected; ``index``: the
    entry of a list that msgspec rejected."""
    extra, kind = _unwrap(info)
    if "expect" in extra:
        member = next((t for t in _members(info) if _fits(t, value) and "error" in _unwrap(t)[0]), None)
        return _broken(member, value) if member else f"must be {extra['expect']}, got {_describe(value)}"
    if index is not None and isinstance(kind, mi.ListType) and isinstance(value, list) and index < len(value):
        if _fits(kind.item_type, value[index]):  # the entry is of the right kind: its own constraint
            return _broken(kind.item_type, value[index])
        return f"must be {_expected(info)}, got {_describe(value)}"
    member = next((t for t in _members(info) if _fits(t, value)), None)
    return _broken(member, value) if member else f"must be {_expected(info)}, got {_describe(value)}"


def _broken(info: mi.Type, value: object) -> str:
    """The constraint ``value`` breaks, ``value`` being of the kind ``info`` asks for."""
    extra, kind = _unwrap(info)
    choices = kind.values if isinstance(kind, mi.LiteralType) else ()
    if "error" in extra:
        return str(extra["error"]).format(
            value=value, suggest=suggest(value, choices), choices=", ".join(map(str, choices))
        )
    if choices:
        listed = ", ".join(repr(c) for c in choices)
        return f"must be one of {listed}, got {value!r}{suggest(value, choices)}"
    if isinstance(kind, (mi.IntType, mi.FloatType)) and isinstance(value, (int, float)):
        shown = float(value) if isinstance(kind, mi.FloatType) else value
        return f"must be {_bounds(kind)}, got {shown}"
    if isinstance(kind, mi.ListType) and isinstance(value, list) and len(value) < (kind.min_length or 0):
        return "must not be empty"
    return f"must be {_expected(info)}, got {_describe(value)}"


def _bounds(kind: mi.IntType | mi.FloatType) -> str:
    """``> 0``, ``>= 0``, ``in [0, 1)``."""
    low = f"[{kind.ge}" if kind.ge is not None else f"({kind.gt}" if kind.gt is not None else ""
    high = f"{kind.le}]" if kind.le is not None else f"{kind.lt})" if kind.lt is not None else ""
    if low and high:
        return f"in {low}, {high}"
    if low:
        return (">= " if low[0] == "[" else "> ") + low[1:]
    return ("<= " if high[-1:] == "]" else "< ") + high[:-1]


def _expected(info: mi.Type) -> str:
    """What a value of this type is called: "an integer", "a list of numbers", "a table"."""
    extra, kind = _unwrap(info)
    if "expect" in extra:
        return str(extra["expect"])
    if isinstance(kind, mi.UnionType):
        return " or ".join(_expected(t) for t in kind.types if not isinstance(t, mi.NoneType))
    if isinstance(kind, mi.ListType):
        return f"a list of {_plural(kind.item_type)}"
    if isinstance(kind, mi.LiteralType):
        return "one of " + ", ".join(repr(c) for c in kind.values)
    if isinstance(kind, mi.StrType):
        return "a non-empty string" if kind.min_length else "a string"
    names = {mi.IntType: "an integer", mi.FloatType: "a number", mi.BoolType: "true or false"}
    return names.get(type(kind), "a table" if isinstance(kind, mi.StructType) else "a value")


def _plural(info: mi.Type) -> str:
    kind = _unwrap(info)[1]
    if isinstance(kind, (mi.StrType, mi.LiteralType)):
        return "strings"
    return {mi.IntType: "integers", mi.FloatType: "numbers"}.get(type(kind), "values")


def _fits(info: mi.Type, value: object) -> bool:
    """Whether ``value`` is of the kind ``info`` asks for (its constraints aside): 3 is no string, True no integer."""
    kind = _unwrap(info)[1]
    if isinstance(value, bool) and not isinstance(kind, mi.BoolType):
        return isinstance(kind, mi.UnionType) and any(_fits(t, value) for t in kind.types)
    checks: dict[type, type | tuple[type, ...]] = {
        mi.IntType: int,
        mi.FloatType: (int, float),
        mi.StrType: str,
        mi.LiteralType: str,
        mi.ListType: list,
        mi.StructType: dict,
        mi.BoolType: bool,
        mi.NoneType: type(None),
    }
    if isinstance(kind, mi.UnionType):
        return any(_fits(t, value) for t in kind.types)
    return isinstance(value, checks.get(type(kind), object))


def _members(info: mi.Type) -> list[mi.Type]:
    """A union's members; any other type is its own one member (with its Meta)."""
    kind = _unwrap(info)[1]
    return list(kind.types) if isinstance(kind, mi.UnionType) else [info]


def _unwrap(info: mi.Type) -> tuple[dict[str, object], mi.Type]:
    """A type's Meta (description and extra, merged) and the type it annotates."""
    extra: dict[str, object] = {}
    while isinstance(info, mi.Metadata):
        extra |= {**(info.extra_json_schema or {}), **(info.extra or {})}
        info = info.type
    return extra, info


def _struct(info: mi.Type) -> mi.StructType:
    kind = _unwrap(info)[1]
    assert isinstance(kind, mi.StructType), kind
    return kind


def suggest(value: object, choices: Iterable[object]) -> str:
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _describe(value: object) -> str:
    return f"{type(value).__name__} {repr(value)[:40]}"
