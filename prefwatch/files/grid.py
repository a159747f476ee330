"""grid.toml -> Grid -> cells, validated before anything is created.

Every error is one line naming the file, the line (where it can be found) and the key, e.g.::

    grid.toml:7: [train] max_steps: must be an integer > 0, got -3

The grid file is data: nothing in it is evaluated, and commands built from it are argument lists.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefwatch.files import safe

OBJECTIVES = ("dpo", "simpo", "orpo")
EMBEDDED_MODEL = "tiny"
EMBEDDED_DATA = "tiny-sales"
# The same sales pairs with the chosen reply always the shorter one (a brevity-biased split: length is learnable).
EMBEDDED_DATA_SHORT = "tiny-sales-short"
EMBEDDED_DATA_SETS = (EMBEDDED_DATA, EMBEDDED_DATA_SHORT)
# \Z, not $: "$" also matches before a final newline, and "name\n" is no folder name.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")


class GridError(ValueError):
    """A grid file that cannot be launched; str() is the one-line message for the user."""

    def __init__(self, path: Path, line: int | None, key: str, message: str) -> None:
        self.path, self.line, self.key = path, line, key
        where = f"{path}:{line}" if line else f"{path}"
        super().__init__(f"{where}: {key}: {message}")


@dataclass(frozen=True)
class Field:
    kind: str  # int, float, str, opt_str, int_list, float_list, str_list, str_or_list, fraction_or_path, devices
    default: Any
    check: Callable[[Any], str | None] | None = None


def _positive(value: Any) -> str | None:
    return None if value > 0 else f"must be > 0, got {value}"


def _non_negative(value: Any) -> str | None:
    return None if value >= 0 else f"must be >= 0, got {value}"


def _unit_interval(value: Any) -> str | None:
    return None if 0 <= value < 1 else f"must be in [0, 1), got {value}"


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value in choices:
            return None
        return f"must be one of {', '.join(repr(c) for c in choices)}, got {value!r}{_suggest(value, choices)}"

    return check


_SLURM_MEM = re.compile(r"^[0-9]+[KMGT]?\Z")
_SLURM_TIME = re.compile(
    r"^(?:[0-9]+|[0-9]+:[0-9]{1,2}(?::[0-9]{1,2})?|[0-9]+-[0-9]{1,2}(?::[0-9]{1,2}(?::[0-9]{1,2})?)?|UNLIMITED)\Z"
)
# sbatch options prefwatch sets itself for every cell: given again in [slurm] options they would break it.
SBATCH_OWN_OPTIONS = ("--output", "--error", "--chdir", "--job-name", "--parsable", "--wrap", "--open-mode", "--array")


def _slurm_mem(value: Any) -> str | None:
    return None if _SLURM_MEM.match(value) else f"must be a Slurm memory size like 16G or 4000M, got {value!r}"


def _slurm_time(value: Any) -> str | None:
    if _SLURM_TIME.match(value):
        return None
    return f'must be a Slurm time limit like "02:00:00", "90" (minutes) or "1-12:00:00", got {value!r}'


# sbatch's short options that take no value: in a cluster like "-vo/path" the letter after them is
# another option; after any other letter the rest of the entry is that option's value.
SBATCH_SHORT_FLAGS = "HkOQsvWhVu"
SBATCH_OWN_SHORT = {"o": "--output", "e": "--error", "D": "--chdir", "J": "--job-name", "a": "--array"}


def _sbatch_options(value: Any) -> str | None:
    for option in value:
        name = option.split("=", 1)[0]
        if not option.startswith("-") or any(c.isspace() for c in name) or any(ord(c) < 32 for c in option):
            return f'one sbatch option per entry, its value after "=" (like "--qos=high"), got {option!r}'
        own = sbatch_own_option(option)
        if own:
            return f"{own} is set by prefwatch for every cell (output goes to the cell's stdout.log): {option!r} would override it"
    return None


def sbatch_own_option(option: str) -> str | None:
    """Which of prefwatch's own sbatch options ``option`` would set, by sbatch's own reading of it.

    sbatch parses with getopt_long: a long option may be abbreviated to any prefix that is unambiguous
    (``--outp=x`` is ``--output=x``; an ambiguous one like ``--o`` is an error at submission, refused
    here too), and short options take their value attached (``-o/path``, ``-Jname``) after any number
    of flags that take none (``-vo/path``). Options given after prefwatch's own override them.
    """
    if option.startswith("--"):
        name = option[2:].split("=", 1)[0]
        return next((own for own in SBATCH_OWN_OPTIONS if own[2:].startswith(name)), None)
    for letter in option[1:]:
        if letter in SBATCH_OWN_SHORT:
            return SBATCH_OWN_SHORT[letter]
        if letter not in SBATCH_SHORT_FLAGS:
            return None  # the rest is this option's value
    return None


def _seeds(value: Any) -> str | None:
    """Seeds go to numpy, which takes 0..2^32-1: any other makes every cell fail as it starts."""
    bad = [seed for seed in value if not 0 <= seed < 1 << 32]
    return f"a seed must be in 0..{(1 << 32) - 1}, got {bad[0]}" if bad else None


def setting(default: Any, kind: str, check: Callable[[Any], str | None] | None = None, doc: str = "") -> Any:
    """A grid key: its default, its kind and check (the validator's), and the comment ``init`` writes beside it.

    The dataclasses below are the one place a key and its default are declared: the validator, the
    launcher, the supervisor, the Slurm backend, the trainer's cell defaults and ``init`` all read them.
    """
    meta = {"spec": Field(kind, default, check), "doc": doc}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelSettings:
    """[model]: the model every cell tunes."""

    name: str = setting(EMBEDDED_MODEL, "str", doc='"tiny" (embedded), a Hugging Face id or a local path')
    dtype: str = setting(
        "auto", "str", _one_of("auto", "bf16", "fp16", "fp32"), doc="auto: bf16 on GPUs that support it, else fp32"
    )


@dataclass
class DataSettings:
    """[data]: the preference pairs and the held-out share every cell is judged on."""

    name: str = setting(
        EMBEDDED_DATA,
        "str",
        doc='"tiny-sales" (embedded; "tiny-sales-short": chosen always shorter), a JSONL file or a data set id',
    )
    heldout: float | str = setting(
        0.2, "fraction_or_path", doc="held-out share, or a JSONL file; every cell is judged on the same pairs"
    )
    max_length: int = setting(128, "int", _positive)
    seed: int = setting(1234, "int")


@dataclass
class TrainSettings:
    """[train]: the optimisation, shared by every cell."""

    max_steps: int = setting(100, "int", _positive)
    learning_rate: float = setting(5e-4, "float", _positive)
    batch_size: int = setting(8, "int", _positive)
    eval_batch_size: int = setting(10, "int", _positive, doc="divides the 100 held-out pairs of the tiny data")
    grad_accum: int = setting(1, "int", _positive)
    eval_every: int = setting(10, "int", _positive)
    log_every: int = setting(1, "int", _positive)
    save_every: int = setting(50, "int", _positive)
    lr_scheduler: str = setting("constant", "str", _one_of("constant", "linear", "cosine"))
    warmup_steps: int = setting(0, "int", _non_negative)
    completions: int = setting(
        8,
        "int",
        _non_negative,
        doc="held-out prompts answered (greedy) at each evaluation: what the model writes; 0: none",
    )
    completion_tokens: int = setting(64, "int", _positive, doc="max_new_tokens of those answers")
    seeds: list[int] = setting(
        [0], "int_list", _seeds, doc="add seeds to see whether a difference is larger than the spread across runs"
    )


@dataclass
class GridAxes:
    """[grid]: the axes whose product is the grid's cells."""

    objectives: list[str] = setting(["dpo", "simpo"], "str_list")
    ranks: list[int] = setting([16, 8], "int_list")
    betas: list[float] = setting([], "float_list", doc="a sweep over the objective's beta (empty: its table's)")
    learning_rates: list[float] = setting([], "float_list", doc="a sweep over [train] learning_rate (empty: that)")


@dataclass
class LoraSettings:
    """[lora]: the adapter every cell trains (its rank is a grid axis)."""

    alpha: int = setting(32, "int", _positive)
    dropout: float = setting(0.0, "float", _unit_interval)
    target_modules: str | list[str] = setting("all-linear", "str_or_list")


@dataclass
class ResourcesSettings:
    """[resources]: where cells run (kept in the run directory's resources.json)."""

    devices: str | list[int] = setting(
        "auto", "devices", doc='"auto": the visible GPUs, else the CPU; "cpu"; or a list of GPU indices'
    )
    cells_per_device: int = setting(1, "int", _positive)
    max_parallel: int = setting(0, "int", _non_negative, doc="0: as many as there are slots")
    threads_per_cell: int = setting(1, "int", _positive)
    backend: str = setting("local", "str", _one_of("local", "slurm"))


@dataclass
class SlurmSettings:
    """[slurm]: read only with [resources] backend = "slurm": each cell becomes one sbatch job."""

    partition: str | None = setting(None, "opt_str")
    gpus_per_cell: int = setting(0, "int", _non_negative)
    cpus_per_cell: int = setting(0, "int", _non_negative, doc="0: threads_per_cell")
    mem: str | None = setting(None, "opt_str", _slurm_mem)
    time: str | None = setting(None, "opt_str", _slurm_time)
    account: str | None = setting(None, "opt_str")
    options: list[str] = setting([], "str_list", _sbatch_options)


STOP_REASONS = ("non_finite", "overoptimization")


def _webhook_url(value: Any) -> str | None:
    # The value is not echoed: a webhook URL carries its secret in its path.
    return (
        None
        if value.startswith(("https://", "http://"))
        else "must be an http(s) URL (Slack or Discord incoming webhook)"
    )


def _argv(value: Any) -> str | None:
    return None if not value or value[0] else "the first entry is the program to run; it must not be empty"


def _stop_reasons(value: Any) -> str | None:
    unknown = [v for v in value if v not in STOP_REASONS]
    if unknown:
        return f"unknown reason {unknown[0]!r}{_suggest(unknown[0], STOP_REASONS)}; one of {', '.join(STOP_REASONS)}"
    return None


@dataclass
class AlertSettings:
    """[alerts]: where findings, cell ends and the verdict go with no monitor open (prefwatch.act.alerts)."""

    webhook: str | None = setting(None, "opt_str", _webhook_url, doc="a Slack or Discord incoming-webhook URL")
    command: list[str] = setting([], "str_list", _argv, doc='an argument list, no shell: ["notify-send", "prefwatch"]')
    min_interval: float = setting(10.0, "float", _non_negative, doc="seconds between two messages")


@dataclass
class PolicySettings:
    """[policy]: findings that stop a running cell (prefwatch.act.policy)."""

    stop_on: list[str] = setting(
        ["non_finite"], "str_list", _stop_reasons, doc='"non_finite" (diverged); add "overoptimization"'
    )
    patience: int = setting(
        3, "int", _positive, doc="with overoptimization: evaluations past the best held-out accuracy"
    )


@dataclass
class DpoParams:
    """[objectives.dpo]"""

    beta: float = setting(0.1, "float", _positive)


@dataclass
class SimpoParams:
    """[objectives.simpo]: SimPO's reward is beta x the mean token log-prob, so its beta is larger than DPO's."""

    beta: float = setting(2.0, "float", _positive)
    gamma: float = setting(1.0, "float", _non_negative, doc="target margin")


@dataclass
class OrpoParams:
    """[objectives.orpo]"""

    beta: float = setting(0.1, "float", _positive)


TABLES: dict[str, type] = {
    "model": ModelSettings,
    "data": DataSettings,
    "train": TrainSettings,
    "grid": GridAxes,
    "lora": LoraSettings,
    "resources": ResourcesSettings,
    "slurm": SlurmSettings,
    "alerts": AlertSettings,
    "policy": PolicySettings,
}
OBJECTIVE_TABLES: dict[str, type] = {"dpo": DpoParams, "simpo": SimpoParams, "orpo": OrpoParams}


def table_fields(cls: type) -> dict[str, Field]:
    """The validator's view of a settings dataclass: key -> kind, default and check."""
    return {f.name: f.metadata["spec"] for f in dataclasses.fields(cls)}


def table_docs(cls: type) -> dict[str, str]:
    """The comment ``init`` writes beside each key of a table."""
    return {f.name: f.metadata["doc"] for f in dataclasses.fields(cls)}


SCHEMA: dict[str, dict[str, Field]] = {table: table_fields(cls) for table, cls in TABLES.items()}
OBJECTIVE_SCHEMA: dict[str, dict[str, Field]] = {name: table_fields(cls) for name, cls in OBJECTIVE_TABLES.items()}

TOP_LEVEL = ("name", *SCHEMA, "objectives")


@dataclass
class Settings:
    """Every table of a grid, validated and typed: the one value launcher, supervisor and backends read."""

    model: ModelSettings
    data: DataSettings
    train: TrainSettings
    grid: GridAxes
    lora: LoraSettings
    resources: ResourcesSettings
    slurm: SlurmSettings
    alerts: AlertSettings
    policy: PolicySettings
    objectives: dict[str, Any]  # objective -> DpoParams | SimpoParams | OrpoParams


def default_settings() -> Settings:
    """Every default, typed: what a grid file that sets nothing means."""
    tables = {table: cls() for table, cls in TABLES.items()}
    return Settings(**tables, objectives={name: cls() for name, cls in OBJECTIVE_TABLES.items()})


def cell_defaults() -> dict[str, Any]:
    """The defaults of a cell.json (the trainer fills what a hand-written cell leaves out), from the same tables."""
    s = default_settings()
    data = dataclasses.asdict(s.data)
    return {
        "id": None,  # the cell folder's name when missing
        "index": 0,
        "grid": None,
        "objective": "dpo",
        "rank": s.grid.ranks[0],
        "seed": s.train.seeds[0],
        "model": dataclasses.asdict(s.model),
        # split: which split of a data set id the pairs come from (not a grid key)
        "data": {**data, "split": "train"},
        "train": {k: v for k, v in dataclasses.asdict(s.train).items() if k != "seeds"},
        "objective_params": {},  # filled per objective from objective_defaults()
        "lora": dataclasses.asdict(s.lora),
        "threads": s.resources.threads_per_cell,
    }


def objective_defaults() -> dict[str, dict[str, float]]:
    return {name: dataclasses.asdict(cls()) for name, cls in OBJECTIVE_TABLES.items()}


@dataclass(frozen=True)
class Cell:
    """One training job of the grid: an objective, a LoRA rank and a seed, with every setting resolved."""

    id: str
    index: int
    objective: str
    rank: int
    seed: int
    settings: Settings = field(compare=False)

    def to_json(self, grid_name: str) -> dict[str, Any]:
        s = self.settings
        return {
            "id": self.id,
            "index": self.index,
            "grid": grid_name,
            "objective": self.objective,
            "rank": self.rank,
            "seed": self.seed,
            "model": dataclasses.asdict(s.model),
            "data": dataclasses.asdict(s.data),
            "train": {k: v for k, v in dataclasses.asdict(s.train).items() if k != "seeds"},
            "objective_params": dataclasses.asdict(s.objectives[self.objective]),
            "lora": dataclasses.asdict(s.lora),
            "threads": s.resources.threads_per_cell,
        }


@dataclass(frozen=True)
class Grid:
    name: str
    path: Path
    settings: Settings
    cells: tuple[Cell, ...]

    @property
    def objectives(self) -> list[str]:
        return list(self.settings.grid.objectives)

    @property
    def ranks(self) -> list[int]:
        return list(self.settings.grid.ranks)


# The most cells a grid file may make without --force: a product of sweeps grows fast (2 objectives x 100
# ranks x 100 betas x 50 learning rates is a million cells, 35 s and 1 GB just to list), and a grid larger
# than this is far more than a machine or a monitor follows; it is a typo more often than a plan.
MAX_CELLS = 4096


def load_grid(path: Path | str, force: bool = False) -> Grid:
    """Parse and validate a grid file; raises GridError with a one-line message. A grid of more than
    MAX_CELLS cells is refused unless ``force``."""
    path = Path(path)
    try:
        text = safe.read_text(path)
    except FileNotFoundError:
        raise GridError(path, None, "file", "no such file") from None
    except OSError as exc:  # a folder, a named pipe (never waited on), no permission
        raise GridError(path, None, "file", f"cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise GridError(path, None, "file", f"cannot be read ({exc})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None) or _line_from_message(str(exc))
        message = getattr(exc, "msg", None) or re.sub(r"\s*\(at line.*\)$", "", str(exc))
        raise GridError(path, line, "syntax", f"not valid TOML: {message}") from None
    return _Validator(path, text, force).grid(raw)


def load_tables(path: Path, tables: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Some tables of a grid file, validated alone: the supervisor reads [alerts] and [policy] from the
    run directory's copy, whose relative data paths no longer resolve."""
    text = safe.read_text(path)
    raw = tomllib.loads(text)
    validator = _Validator(path, text)
    return {table: validator.table(table, raw.get(table, {}), SCHEMA[table]) for table in tables}


def _line_from_message(message: str) -> int | None:
    match = re.search(r"line (\d+)", message)
    return int(match.group(1)) if match else None


def _suggest(value: Any, choices: Any) -> str:
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Validator:
    def __init__(self, path: Path, text: str, force: bool = False) -> None:
        self.path = path
        self.lines = text.splitlines()
        self.force = force

    def fail(self, table: str, key: str, message: str) -> GridError:
        label = f"[{table}] {key}" if table else key
        return GridError(self.path, self.line_of(table, key), label, message)

    def line_of(self, table: str, key: str | None) -> int | None:
        """The line that sets ``key`` in ``[table]``: ``key =`` under the table's header, a header
        ``[table.key]`` of its own, or a dotted ``table.key =``; else the table's header line."""
        full = f"{table}.{key}" if table and key else table or key or ""
        current, header_line = "", None
        for number, line in enumerate(self.lines, start=1):
            stripped = line.strip()
            header = re.match(r"^\[+\s*([^\]]+?)\s*\]", stripped)
            if header:
                current = header.group(1).replace('"', "").replace(" ", "")
                if key and (current == full or current.startswith(full + ".")):
                    return number
                if current == table:
                    header_line = number
                continue
            if key and current == table and re.match(rf'^"?{re.escape(key)}"?\s*=', stripped):
                return number
            if key and current == "" and re.match(rf"^{re.escape(full)}\s*=", stripped):
                return number
        return header_line

    def grid(self, raw: dict[str, Any]) -> Grid:
        for key in raw:
            if key not in TOP_LEVEL:
                raise self.fail("", key, f"unknown key{_suggest(key, TOP_LEVEL)}")
        name = self.name(raw.get("name", self.path.stem))
        settings: dict[str, Any] = {}
        for table, fields in SCHEMA.items():
            settings[table] = self.table(table, raw.get(table, {}), fields)
        settings["objectives"] = self.objective_tables(raw.get("objectives", {}))
        self.cross_checks(settings)
        typed = Settings(
            **{table: cls(**settings[table]) for table, cls in TABLES.items()},
            objectives={name: OBJECTIVE_TABLES[name](**values) for name, values in settings["objectives"].items()},
        )
        self.check_size(typed)
        return Grid(name=name, path=self.path, settings=typed, cells=tuple(self.cells(typed)))

    def check_size(self, settings: Settings) -> None:
        """Refuse a product of more than MAX_CELLS cells (unless forced), before any cell is made, naming
        the longest axis's line."""
        axes = {
            ("grid", "objectives"): len(settings.grid.objectives),
            ("grid", "ranks"): len(settings.grid.ranks),
            ("grid", "betas"): max(1, len(settings.grid.betas)),
            ("grid", "learning_rates"): max(1, len(settings.grid.learning_rates)),
            ("train", "seeds"): len(settings.train.seeds),
        }
        count = math.prod(axes.values())
        if count <= MAX_CELLS or self.force:
            return
        table, key = max(axes, key=lambda axis: axes[axis])
        product = " x ".join(f"{n} {k.replace('_', ' ')}" for (_, k), n in axes.items())
        raise self.fail(
            table, key, f"{count} cells ({product}): over the cap of {MAX_CELLS}; --force launches them all the same"
        )

    def name(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self.fail("", "name", f"must be a string, got {type(value).__name__}")
        if not _SAFE_NAME.match(value) or ".." in value:
            raise self.fail("", "name", f"must be a plain folder name (letters, digits, '.', '_', '-'), got {value!r}")
        return value

    def table(self, table: str, raw: Any, fields: dict[str, Field]) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise self.fail("", table, f"must be a table, got {type(raw).__name__}")
        for key in raw:
            if key not in fields:
                raise self.fail(table, key, f"unknown key{_suggest(key, fields)}")
        resolved = {}
        for key, spec in fields.items():
            value = raw.get(key, spec.default)
            resolved[key] = self.typed(table, key, spec, value)
            if spec.check and key in raw:
                problem = spec.check(resolved[key])
                if problem:
                    raise self.fail(table, key, problem)
        return resolved

    def typed(self, table: str, key: str, spec: Field, value: Any) -> Any:
        def bad(expected: str) -> GridError:
            return self.fail(table, key, f"must be {expected}, got {_describe(value)}")

        kind = spec.kind
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad("an integer")
            return value
        if kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad("a number")
            return float(value)
        if kind == "str":
            if not isinstance(value, str) or not value:
                raise bad("a non-empty string")
            return value
        if kind == "opt_str":
            if value is None:
                return None
            if not isinstance(value, str) or not value:
                raise bad("a non-empty string")
            return value
        if kind == "int_list":
            if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise bad("a list of integers")
            return list(value)
        if kind == "float_list":
            if not isinstance(value, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
            ):
                raise bad("a list of numbers")
            return [float(v) for v in value]
        if kind == "str_list":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise bad("a list of strings")
            return list(value)
        if kind == "str_or_list":
            if isinstance(value, str) and value:
                return value
            if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
                return list(value)
            raise bad("a string or a non-empty list of strings")
        if kind == "fraction_or_path":
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if not 0 < value < 1:
                    raise self.fail(table, key, f"a held-out fraction must be in (0, 1), got {value}")
                return float(value)
            if isinstance(value, str) and value:
                return value
            raise bad("a fraction in (0, 1) or a path to a JSONL file")
        if kind == "devices":
            if value in ("auto", "cpu"):
                return value
            if isinstance(value, list) and value and all(isinstance(v, int) and v >= 0 for v in value):
                return list(value)
            raise bad('"auto", "cpu" or a list of GPU indices')
        raise AssertionError(kind)

    def objective_tables(self, raw: Any) -> dict[str, dict[str, Any]]:
        if not isinstance(raw, dict):
            raise self.fail("", "objectives", f"must be a table, got {_describe(raw)}")
        for name in raw:
            if name not in OBJECTIVE_SCHEMA:
                raise self.fail("objectives", name, f"unknown objective{_suggest(name, OBJECTIVES)}")
        return {
            name: self.table(f"objectives.{name}", raw.get(name, {}), fields)
            for name, fields in OBJECTIVE_SCHEMA.items()
        }

    def cross_checks(self, settings: dict[str, Any]) -> None:
        grid = settings["grid"]
        self.check_list("grid", "objectives", grid["objectives"])
        for objective in grid["objectives"]:
            if objective not in OBJECTIVES:
                raise self.fail(
                    "grid", "objectives", f"unknown objective {objective!r}{_suggest(objective, OBJECTIVES)}"
                )
        self.check_list("grid", "ranks", grid["ranks"])
        for rank in grid["ranks"]:
            if rank <= 0:
                raise self.fail("grid", "ranks", f"a LoRA rank must be > 0, got {rank}")
        for key in ("betas", "learning_rates"):
            if grid[key]:
                self.check_list("grid", key, grid[key])
            for value in grid[key]:
                if not value > 0:
                    raise self.fail("grid", key, f"every value must be > 0, got {value:g}")
        self.check_list("train", "seeds", settings["train"]["seeds"])
        train = settings["train"]
        if train["eval_every"] > train["max_steps"]:
            raise self.fail(
                "train",
                "eval_every",
                f"{train['eval_every']} is more than max_steps ({train['max_steps']}): no evaluation would run",
            )
        if train["warmup_steps"] >= train["max_steps"]:
            raise self.fail("train", "warmup_steps", f"must be below max_steps ({train['max_steps']})")
        self.check_data(settings["data"])
        resources, model = settings["resources"], settings["model"]
        if resources["devices"] == "cpu" and model["dtype"] in ("bf16", "fp16"):
            raise self.fail("model", "dtype", f'{model["dtype"]} conflicts with [resources] devices = "cpu"')
        self.check_slurm(settings)

    def check_slurm(self, settings: dict[str, Any]) -> None:
        resources, slurm = settings["resources"], settings["slurm"]
        if slurm["cpus_per_cell"] == 0:
            slurm["cpus_per_cell"] = resources["threads_per_cell"]
        elif resources["backend"] == "slurm" and resources["threads_per_cell"] > slurm["cpus_per_cell"]:
            raise self.fail(
                "resources",
                "threads_per_cell",
                f"{resources['threads_per_cell']} threads need at least as many [slurm] cpus_per_cell "
                f"({slurm['cpus_per_cell']})",
            )
        dtype = settings["model"]["dtype"]
        if resources["backend"] == "slurm" and slurm["gpus_per_cell"] == 0 and dtype in ("bf16", "fp16"):
            raise self.fail("model", "dtype", f"{dtype} needs a GPU: set [slurm] gpus_per_cell")

    def check_list(self, table: str, key: str, values: list[Any]) -> None:
        if not values:
            raise self.fail(table, key, "must not be empty")
        duplicates = sorted({str(v) for v in values if values.count(v) > 1})
        if duplicates:
            raise self.fail(table, key, f"duplicate entries: {', '.join(duplicates)}")

    def check_data(self, data: dict[str, Any]) -> None:
        base = self.path.parent
        for key in ("name", "heldout"):
            value = data[key]
            if not isinstance(value, str) or value in EMBEDDED_DATA_SETS:
                continue
            if _looks_like_file(value):
                resolved = (base / Path(value).expanduser()).resolve()  # "~/data.jsonl" is the user's home
                if not resolved.is_file():
                    raise self.fail("data", key, f"no such file: {resolved}")
                data[key] = str(resolved)

    def cells(self, settings: Settings) -> list[Cell]:
        seeds = settings.train.seeds
        betas: list[float | None] = [*settings.grid.betas] or [None]
        rates: list[float | None] = [*settings.grid.learning_rates] or [None]
        combos = itertools.product(settings.grid.objectives, settings.grid.ranks, betas, rates, seeds)
        cells = []
        for index, (objective, rank, beta, rate, seed) in enumerate(combos):
            # Ids stay as before for a grid without sweeps; a swept factor adds a token ("b0.1",
            # "lr5e-05": repr of a float, letters, digits, '.', '-' only: a safe folder name).
            cell_id = f"{objective}-r{rank}"
            cell_id += f"-b{beta!r}" if len(betas) > 1 else ""
            cell_id += f"-lr{rate!r}" if len(rates) > 1 else ""
            cell_id += f"-seed{seed}" if len(seeds) > 1 else ""
            cells.append(Cell(cell_id, index, objective, rank, seed, _swept(settings, objective, beta, rate)))
        return cells


def _swept(settings: Settings, objective: str, beta: float | None, rate: float | None) -> Settings:
    """A cell's settings with its beta and learning rate from the [grid] sweeps (shared when none)."""
    if beta is not None:
        params = dataclasses.replace(settings.objectives[objective], beta=beta)
        settings = dataclasses.replace(settings, objectives={**settings.objectives, objective: params})
    if rate is not None:
        settings = dataclasses.replace(settings, train=dataclasses.replace(settings.train, learning_rate=rate))
    return settings


def _looks_like_file(value: str) -> bool:
    return value.endswith((".jsonl", ".json")) or value.startswith((".", "/", "~"))


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}"
