"""grid.toml -> Settings -> cells, validated before anything is created.

Every error is one line naming the file, the line (where it can be found) and the key, e.g.::

    grid.toml:7: [train] max_steps: must be > 0, got -3

The tables and their constraints are msgspec Structs (prefwatch.files.settings); the file is read with
tomllib and converted to them, and what msgspec rejects is told with the file's line. The checks that
span keys (``eval_every`` within ``max_steps``, a dtype the devices cannot run) follow here.

The grid file is data: nothing in it is evaluated, and commands built from it are argument lists.
"""

from __future__ import annotations

import itertools
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from msgspec import inspect as mi
from msgspec.structs import replace

from prefwatch.files import safe
from prefwatch.files.settings import (
    EMBEDDED_DATA_SETS,
    OBJECTIVES,
    AlertSettings,
    CellData,
    CellSettings,
    CellTrain,
    DataSettings,
    DpoParams,
    GridAxes,
    LoraSettings,
    ModelSettings,
    ObjectiveParams,
    Optimisation,
    OrpoParams,
    PolicySettings,
    ResourcesSettings,
    Settings,
    SimpoParams,
    SlurmSettings,
    TrainSettings,
    explain,
    suggest,
)

# \Z, not $: "$" also matches before a final newline, and "name\n" is no folder name.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")

# The tables of a grid file, by name (``init`` writes them in this order).
TABLES: dict[str, type[msgspec.Struct]] = {
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
OBJECTIVE_TABLES: dict[str, type[msgspec.Struct]] = {"dpo": DpoParams, "simpo": SimpoParams, "orpo": OrpoParams}


class GridError(ValueError):
    """A grid file that cannot be launched; str() is the one-line message for the user."""

    def __init__(self, path: Path, line: int | None, key: str, message: str) -> None:
        self.path, self.line, self.key = path, line, key
        where = f"{path}:{line}" if line else f"{path}"
        super().__init__(f"{where}: {key}: {message}")


# sbatch options prefwatch sets itself for every cell: given again in [slurm] options they would break it.
SBATCH_OWN_OPTIONS = ("--output", "--error", "--chdir", "--job-name", "--parsable", "--wrap", "--open-mode", "--array")


# sbatch's short options that take no value: in a cluster like "-vo/path" the letter after them is
# another option; after any other letter the rest of the entry is that option's value.
SBATCH_SHORT_FLAGS = "HkOQsvWhVu"
SBATCH_OWN_SHORT = {"o": "--output", "e": "--error", "D": "--chdir", "J": "--job-name", "a": "--array"}


def _sbatch_options(options: list[str]) -> str | None:
    for option in options:
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


@dataclass(frozen=True)
class Cell:
    """One training job of the grid: an objective, a LoRA rank and a seed, with every setting resolved."""

    id: str
    index: int
    objective: str
    rank: int
    seed: int
    settings: Settings = field(compare=False)

    def record(self, grid_name: str) -> CellSettings:
        """The cell's cell.json, as the launcher writes it."""
        s = self.settings
        return CellSettings(
            id=self.id,
            index=self.index,
            grid=grid_name,
            objective=self.objective,
            rank=self.rank,
            seed=self.seed,
            model=s.model,
            data=CellData(**msgspec.structs.asdict(s.data)),
            train=CellTrain(**{k: getattr(s.train, k) for k in Optimisation.__struct_fields__}),
            objective_params=ObjectiveParams(**msgspec.structs.asdict(s.objectives.of(self.objective))),
            lora=s.lora,
            threads=s.resources.threads_per_cell,
        )


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


def load_tables(path: Path, tables: tuple[str, ...]) -> Settings:
    """Some tables of a grid file, validated alone (the others keep their defaults): the supervisor reads
    [alerts] and [policy] from the run directory's copy, whose relative data paths no longer resolve."""
    text = safe.read_text(path)
    raw = tomllib.loads(text)
    return _Validator(path, text).settings({table: raw[table] for table in tables if table in raw})


def _line_from_message(message: str) -> int | None:
    match = re.search(r"line (\d+)", message)
    return int(match.group(1)) if match else None


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
        name = self.name(raw.pop("name", self.path.stem))
        settings = self.settings(raw)
        self.cross_checks(settings)
        self.check_size(settings)
        return Grid(name=name, path=self.path, settings=settings, cells=tuple(self.cells(settings)))

    def settings(self, raw: dict[str, Any]) -> Settings:
        """The tables, typed: an unknown key (with the nearest known one) or the first value msgspec
        rejects, as one line naming the key."""
        self.unknown_keys(raw, mi.type_info(Settings), [])
        try:
            return msgspec.convert(raw, Settings)
        except msgspec.ValidationError as exc:
            keys, message = explain(exc, raw, Settings)
            keys = keys or ["file"]  # msgspec names a field; else the whole file is at fault
            raise self.fail(".".join(keys[:-1]), keys[-1], message) from None

    def unknown_keys(self, raw: dict[str, Any], info: Any, where: list[str]) -> None:
        fields = {f.encode_name: f.type for f in info.fields}
        known = ["name", *fields] if not where else list(fields)
        for key, value in raw.items():
            if key not in known:
                shown = key if key.isprintable() else repr(key)  # the file's text, shown, never obeyed
                if where == ["objectives"]:
                    raise self.fail("objectives", shown, f"unknown objective{suggest(key, OBJECTIVES)}")
                raise self.fail(".".join(where), shown, f"unknown key{suggest(key, known)}")
            inner = fields.get(key)
            if isinstance(inner, mi.StructType) and isinstance(value, dict):
                self.unknown_keys(value, inner, [*where, key])

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

    def cross_checks(self, s: Settings) -> None:
        """What one key's type cannot say: lists without repeats, keys read together, files that exist."""
        lists: dict[tuple[str, str], list[Any]] = {
            ("grid", "objectives"): s.grid.objectives,
            ("grid", "ranks"): s.grid.ranks,
            ("grid", "betas"): s.grid.betas,
            ("grid", "learning_rates"): s.grid.learning_rates,
            ("train", "seeds"): s.train.seeds,
        }
        for (table, key), values in lists.items():
            duplicates = sorted({str(v) for v in values if values.count(v) > 1})
            if duplicates:
                raise self.fail(table, key, f"duplicate entries: {', '.join(duplicates)}")
        if s.train.eval_every > s.train.max_steps:
            raise self.fail(
                "train",
                "eval_every",
                f"{s.train.eval_every} is more than max_steps ({s.train.max_steps}): no evaluation would run",
            )
        if s.train.warmup_steps >= s.train.max_steps:
            raise self.fail("train", "warmup_steps", f"must be below max_steps ({s.train.max_steps})")
        self.check_data(s.data)
        if s.resources.devices == "cpu" and s.model.dtype in ("bf16", "fp16"):
            raise self.fail("model", "dtype", f'{s.model.dtype} conflicts with [resources] devices = "cpu"')
        self.check_slurm(s)
        problem = _sbatch_options(s.slurm.options)
        if problem:
            raise self.fail("slurm", "options", problem)
        if s.alerts.command and not s.alerts.command[0]:
            raise self.fail("alerts", "command", "the first entry is the program to run; it must not be empty")

    def check_slurm(self, s: Settings) -> None:
        resources, slurm = s.resources, s.slurm
        if slurm.cpus_per_cell == 0:
            slurm.cpus_per_cell = resources.threads_per_cell
        elif resources.backend == "slurm" and resources.threads_per_cell > slurm.cpus_per_cell:
            raise self.fail(
                "resources",
                "threads_per_cell",
                f"{resources.threads_per_cell} threads need at least as many [slurm] cpus_per_cell "
                f"({slurm.cpus_per_cell})",
            )
        dtype = s.model.dtype
        if resources.backend == "slurm" and slurm.gpus_per_cell == 0 and dtype in ("bf16", "fp16"):
            raise self.fail("model", "dtype", f"{dtype} needs a GPU: set [slurm] gpus_per_cell")

    def check_data(self, data: DataSettings) -> None:
        """A data or held-out value that names a file: resolved beside the grid file, and it must exist."""
        base = self.path.parent
        for key in ("name", "heldout"):
            value = getattr(data, key)
            if not isinstance(value, str) or value in EMBEDDED_DATA_SETS or not _looks_like_file(value):
                continue
            resolved = (base / Path(value).expanduser()).resolve()  # "~/data.jsonl" is the user's home
            if not resolved.is_file():
                raise self.fail("data", key, f"no such file: {resolved}")
            setattr(data, key, str(resolved))

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
        params = replace(settings.objectives.of(objective), beta=beta)
        settings = replace(settings, objectives=replace(settings.objectives, **{objective: params}))
    if rate is not None:
        settings = replace(settings, train=replace(settings.train, learning_rate=rate))
    return settings


def _looks_like_file(value: str) -> bool:
    return value.endswith((".jsonl", ".json")) or value.startswith((".", "/", "~"))
