"""The grid file's validator at its edges: the exact line each mistake gets (file, line, key, message), the
values just inside each limit that must load, and the defaults a cell.json takes from the same tables.

test_grid.py checks a corpus of broken files for the right line and key; here the whole message is
pinned, one case per check, so a changed bound, a lost suggestion or a garbled label fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from msgspec import inspect as mi

from prefwatch.files import settings as st
from prefwatch.files.grid import (
    OBJECTIVE_TABLES,
    TABLES,
    GridError,
    _Validator,
    load_grid,
    load_tables,
    sbatch_own_option,
)

CHOICES = "'auto', 'bf16', 'fp16', 'fp32'"
DEVICES = 'must be "auto", "cpu" or a list of GPU indices'

# (grid file text, the message after the file's path), each worked out from grid.py's checks.
BAD = {
    "webhook not http": (
        '[alerts]\nwebhook = "ftp://example.org/x"\n',
        ":2: [alerts] webhook: must be an http(s) URL (Slack or Discord incoming webhook)",
    ),
    "command without a program": (
        '[alerts]\ncommand = ["", "x"]\n',
        ":2: [alerts] command: the first entry is the program to run; it must not be empty",
    ),
    "unknown stop reason after a known one": (
        '[policy]\nstop_on = ["non_finite", "overoptimisation"]\n',
        ":2: [policy] stop_on: unknown reason 'overoptimisation' (did you mean 'overoptimization'?);"
        " one of frozen, non_finite, overoptimization",
    ),
    "dtype with a suggestion": (
        '[model]\ndtype = "bf32"\n',
        f":2: [model] dtype: must be one of {CHOICES}, got 'bf32' (did you mean 'fp32'?)",
    ),
    "dtype without a suggestion": (
        '[model]\ndtype = "zzz"\n',
        f":2: [model] dtype: must be one of {CHOICES}, got 'zzz'",
    ),
    "zero steps": ("[train]\nmax_steps = 0\n", ":2: [train] max_steps: must be > 0, got 0"),
    "negative warmup": ("[train]\nwarmup_steps = -1\n", ":2: [train] warmup_steps: must be >= 0, got -1"),
    "dotted key at the top": ("train.max_steps = 0\n", ":1: [train] max_steps: must be > 0, got 0"),
    "a default past max_steps: the table's header line": (
        "[train]\nmax_steps = 5\n[lora]\nalpha = 8\n",
        ":1: [train] eval_every: 10 is more than max_steps (5): no evaluation would run",
    ),
    "warmup as long as the run (evaluating at the last step is fine)": (
        "[train]\nmax_steps = 5\neval_every = 5\nwarmup_steps = 5\n",
        ":4: [train] warmup_steps: must be below max_steps (5)",
    ),
    "unknown nested table": (
        "[train]\nmax_steps = 5\n[train.extra.deeper]\nx = 1\n",
        ":3: [train] extra: unknown key",
    ),
    "spaced header": ("[objectives . simpo]\nbeta = -1.0\n", ":2: [objectives.simpo] beta: must be > 0, got -1.0"),
    "quoted header": ('[objectives."simpo"]\ngamma = -1\n', ":2: [objectives.simpo] gamma: must be >= 0, got -1.0"),
    "name not a string": ("name = 3\n", ":1: name: must be a string, got int"),
    "name with two dots": (
        'name = "a..b"\n',
        ":1: name: must be a plain folder name (letters, digits, '.', '_', '-'), got 'a..b'",
    ),
    "table not a table": ("train = 3\n", ":1: train: must be a table, got int 3"),
    "string not a string": ("[model]\nname = 3\n", ":2: [model] name: must be a non-empty string, got int 3"),
    "optional string empty": ('[slurm]\naccount = ""\n', ":2: [slurm] account: must be a non-empty string, got str ''"),
    "integer list with a float": (
        "[grid]\nranks = [8, 1.5]\n",
        ":2: [grid] ranks: must be a list of integers, got list [8, 1.5]",
    ),
    "integer list with a boolean": (
        "[grid]\nranks = [8, true]\n",
        ":2: [grid] ranks: must be a list of integers, got list [8, True]",
    ),
    "number list with a string": (
        '[grid]\nbetas = [0.1, "x"]\n',
        ":2: [grid] betas: must be a list of numbers, got list [0.1, 'x']",
    ),
    "string list with a number": (
        '[grid]\nobjectives = ["dpo", 3]\n',
        ":2: [grid] objectives: must be a list of strings, got list ['dpo', 3]",
    ),
    "modules empty": (
        '[lora]\ntarget_modules = ""\n',
        ":2: [lora] target_modules: must be a string or a non-empty list of strings, got str ''",
    ),
    "modules with an empty entry": (
        '[lora]\ntarget_modules = ["q_proj", ""]\n',
        ":2: [lora] target_modules: must be a string or a non-empty list of strings, got list ['q_proj', '']",
    ),
    "held-out share of zero": (
        "[data]\nheldout = 0\n",
        ":2: [data] heldout: a held-out fraction must be in (0, 1), got 0",
    ),
    "held-out path empty": (
        '[data]\nheldout = ""\n',
        ":2: [data] heldout: must be a fraction in (0, 1) or a path to a JSONL file, got str ''",
    ),
    "no devices": ("[resources]\ndevices = []\n", f":2: [resources] devices: {DEVICES}, got list []"),
    "negative device": ("[resources]\ndevices = [-1]\n", f":2: [resources] devices: {DEVICES}, got list [-1]"),
    "fractional device": ("[resources]\ndevices = [1.5]\n", f":2: [resources] devices: {DEVICES}, got list [1.5]"),
    "objectives not a table": ("objectives = 3\n", ":1: objectives: must be a table, got int 3"),
    "unknown objective table": (
        "[objectives.dpoo]\nbeta = 0.1\n",
        ":1: [objectives] dpoo: unknown objective (did you mean 'dpo'?)",
    ),
    "a beta of zero": ("[grid]\nbetas = [0.0, 0.1]\n", ":2: [grid] betas: every value must be > 0, got 0"),
    "fp16 on the CPU": (
        '[model]\ndtype = "fp16"\n[resources]\ndevices = "cpu"\n',
        ':2: [model] dtype: fp16 conflicts with [resources] devices = "cpu"',
    ),
    "more threads than Slurm CPUs": (
        '[resources]\nbackend = "slurm"\nthreads_per_cell = 3\n[slurm]\ncpus_per_cell = 2\n',
        ":3: [resources] threads_per_cell: 3 threads need at least as many [slurm] cpus_per_cell (2)",
    ),
    "fp16 on Slurm without a GPU": (
        '[model]\ndtype = "fp16"\n[resources]\nbackend = "slurm"\n',
        ":2: [model] dtype: fp16 needs a GPU: set [slurm] gpus_per_cell",
    ),
    "no objectives": ("[grid]\nobjectives = []\n", ":2: [grid] objectives: must not be empty"),
    "duplicate ranks": ("[grid]\nranks = [8, 8, 4, 4]\n", ":2: [grid] ranks: duplicate entries: 4, 8"),
    "a long value is cut in the message": (
        '[train]\nmax_steps = "' + "x" * 60 + '"\n',
        ":2: [train] max_steps: must be an integer, got str '" + "x" * 39,
    ),
    "Slurm memory with a space": (
        '[slurm]\nmem = "16 G"\n',
        ":2: [slurm] mem: must be a Slurm memory size like 16G or 4000M, got '16 G'",
    ),
    "an unknown key that holds a newline and an escape": (
        '[train]\n"a\\nb\\u001b[2J" = 1\n',
        ":1: [train] 'a\\nb\\x1b[2J': unknown key",
    ),
    "TOML error at the end of the document": (
        "a = [1, 2",
        ": syntax: not valid TOML: Unclosed array (at end of document)",
    ),
    "TOML error on a line": ("x = 1\nx = 2\n", ":2: syntax: not valid TOML: Cannot overwrite a value"),
}


def grid_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "g.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "message"), list(BAD.values()), ids=list(BAD))
def test_each_mistake_gets_its_exact_line(tmp_path: Path, text: str, message: str) -> None:
    path = grid_file(tmp_path, text)
    with pytest.raises(GridError) as caught:
        load_grid(path)
    assert str(caught.value) == f"{path}{message}"


@pytest.mark.parametrize("value", ["pairs.json", "./pairs", "/nonexistent-prefwatch/pairs", "~/pairs"])
def test_values_that_look_like_files_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = grid_file(tmp_path, f'[data]\nname = "{value}"\n')
    resolved = (tmp_path / Path(value).expanduser()).resolve()
    with pytest.raises(GridError) as caught:
        load_grid(path)
    assert str(caught.value) == f"{path}:2: [data] name: no such file: {resolved}"


def test_a_data_set_id_is_not_a_file(tmp_path: Path) -> None:
    path = grid_file(tmp_path, '[data]\nname = "org/pairs"\nheldout = 0.5\n')
    assert load_grid(path).settings.data.name == "org/pairs"


def test_a_grid_file_that_cannot_be_read(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(GridError) as caught:
        load_grid(missing)
    assert str(caught.value) == f"{missing}: file: no such file"
    assert (caught.value.path, caught.value.line, caught.value.key) == (missing, None, "file")
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    with pytest.raises(GridError) as caught:
        load_grid(folder)
    assert str(caught.value) == f"{folder}: file: cannot be read (not a regular file: a folder)"
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'name = "\xff"\n')
    with pytest.raises(GridError) as caught:
        load_grid(latin)
    assert str(caught.value) == (
        f"{latin}: file: cannot be read ('utf-8' codec can't decode byte 0xff in position 8: invalid start byte)"
    )


def test_values_just_inside_each_limit_load(tmp_path: Path) -> None:
    path = grid_file(
        tmp_path,
        """
[model]
dtype = "bf16"        # local backend, devices by index: no GPU check here
[train]
warmup_steps = 0
seeds = [1, 2]
[grid]
objectives = ["dpo"]
ranks = [1, 2]
[lora]
target_modules = ["q_proj", "v_proj"]
[resources]
devices = [0, 1]
threads_per_cell = 4  # [slurm] cpus_per_cell matters only with backend = "slurm"
[slurm]
cpus_per_cell = 2
mem = "16G"
options = ["--comment=two words=x"]
[alerts]
webhook = "https://hooks.example.org/x"
command = ["notify-send"]
""",
    )
    grid = load_grid(path)
    s = grid.settings
    assert grid.path == path and grid.name == "g"
    assert (s.model.dtype, s.train.warmup_steps, s.lora.target_modules) == ("bf16", 0, ["q_proj", "v_proj"])
    assert (s.resources.devices, s.slurm.cpus_per_cell, s.slurm.mem) == ([0, 1], 2, "16G")
    assert s.slurm.options == ["--comment=two words=x"]
    assert (s.alerts.webhook, s.alerts.command) == ("https://hooks.example.org/x", ["notify-send"])
    assert [(c.id, c.index, c.rank, c.seed) for c in grid.cells] == [
        ("dpo-r1-seed1", 0, 1, 1),
        ("dpo-r1-seed2", 1, 1, 2),
        ("dpo-r2-seed1", 2, 2, 1),
        ("dpo-r2-seed2", 3, 2, 2),
    ]


def test_a_slurm_grid_at_its_limits_loads(tmp_path: Path) -> None:
    path = grid_file(
        tmp_path,
        """
[model]
dtype = "fp32"
[resources]
backend = "slurm"
threads_per_cell = 2
[slurm]
cpus_per_cell = 2
[alerts]
webhook = "http://127.0.0.1:9/hook"
command = []
[policy]
stop_on = ["overoptimization", "non_finite"]
""",
    )
    s = load_grid(path).settings
    assert (s.resources.backend, s.slurm.cpus_per_cell, s.model.dtype) == ("slurm", 2, "fp32")
    assert (s.alerts.webhook, s.alerts.command) == ("http://127.0.0.1:9/hook", [])
    assert s.policy.stop_on == ["overoptimization", "non_finite"]


def test_slurm_cpus_default_to_the_threads_per_cell(tmp_path: Path) -> None:
    path = grid_file(tmp_path, "[resources]\nthreads_per_cell = 3\n")
    assert load_grid(path).settings.slurm.cpus_per_cell == 3


def test_load_tables_validates_only_the_tables_asked_for(tmp_path: Path) -> None:
    # The supervisor's copy of a grid: its relative data path no longer resolves, and must not matter.
    path = grid_file(tmp_path, '[data]\nname = "./gone.jsonl"\n[alerts]\nmin_interval = 5\n[train]\nmax_steps = 3\n')
    tables = load_tables(path, ("alerts", "policy"))
    assert tables.alerts == st.AlertSettings(webhook=None, command=[], min_interval=5.0)
    assert tables.policy == st.PolicySettings(stop_on=["non_finite"], patience=3)
    assert tables.train.max_steps == 100  # not asked for: the default
    path.write_text("[train]\nmax_steps = 3\n[alerts]\nmin_interval = -1\n")
    with pytest.raises(GridError) as caught:
        load_tables(path, ("alerts",))
    assert str(caught.value) == f"{path}:4: [alerts] min_interval: must be >= 0, got -1.0"


def test_a_cell_json_pins_every_setting(tmp_path: Path) -> None:
    grid = load_grid(grid_file(tmp_path, ""))
    assert [c.id for c in grid.cells] == ["dpo-r16", "dpo-r8", "simpo-r16", "simpo-r8"]
    assert msgspec.to_builtins(grid.cells[3].record("mine")) == {
        "id": "simpo-r8",
        "index": 3,
        "grid": "mine",
        "objective": "simpo",
        "rank": 8,
        "seed": 0,
        "model": {"name": "tiny", "dtype": "auto"},
        "data": {"name": "tiny-sales", "heldout": 0.2, "max_length": 128, "seed": 1234, "split": "train"},
        "train": {
            "max_steps": 100,
            "learning_rate": 5e-4,
            "batch_size": 8,
            "eval_batch_size": 10,
            "grad_accum": 1,
            "eval_every": 10,
            "log_every": 1,
            "save_every": 50,
            "lr_scheduler": "constant",
            "warmup_steps": 0,
            "completions": 8,
            "completion_tokens": 64,
            "report_to": "none",
        },
        "objective_params": {"beta": 2.0, "gamma": 1.0, "sft_weight": 0.0},
        "lora": {"alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "threads": 1,
    }
    # DPO takes no gamma: its cell.json has none
    assert msgspec.to_builtins(grid.cells[0].record("mine"))["objective_params"] == {"beta": 0.1}


def test_a_hand_written_cell_gets_what_a_grid_that_sets_nothing_gives(tmp_path: Path) -> None:
    first = load_grid(grid_file(tmp_path, "")).cells[0].record("g")
    written = msgspec.structs.replace(first, id=None, index=None, grid=None, objective_params=st.ObjectiveParams())
    assert st.CellSettings() == written
    assert {name: st.CellSettings(objective=name).params() for name in OBJECTIVE_TABLES} == {
        "dpo": st.DpoParams(beta=0.1),
        "simpo": st.SimpoParams(beta=2.0, gamma=1.0),
        "orpo": st.OrpoParams(beta=0.1),
    }
    given = st.CellSettings(objective="simpo", objective_params=st.ObjectiveParams(gamma=0.5))
    assert given.params() == st.SimpoParams(beta=2.0, gamma=0.5)


def test_a_key_declares_its_default_constraint_and_comment() -> None:
    class Example(msgspec.Struct, kw_only=True):
        listed: Annotated[list[int], st.doc("a list")] = msgspec.field(default_factory=lambda: [1, 2])
        plain: st.PositiveInt = 3

    a, b = Example(), Example()
    assert (a.listed, a.plain) == ([1, 2], 3)
    a.listed.append(9)
    assert b.listed == [1, 2]  # each instance its own list
    assert st.docs(Example) == {"listed": "a list", "plain": ""}
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.convert({"plain": 0}, Example)
    assert st.explain(caught.value, {"plain": 0}, Example) == (["plain"], "must be > 0, got 0")
    assert st.docs(st.TrainSettings)["completion_tokens"] == "max_new_tokens of those answers"


def test_a_choice_lists_the_choices_and_suggests_the_nearest() -> None:
    choice = mi.type_info(Literal["local", "slurm"])
    assert st.problem(choice, "slurn") == "must be one of 'local', 'slurm', got 'slurn' (did you mean 'slurm'?)"
    assert st.problem(choice, "k8s") == "must be one of 'local', 'slurm', got 'k8s'"
    assert st.problem(choice, 3) == "must be one of 'local', 'slurm', got int 3"


@pytest.mark.parametrize(
    ("annotation", "value", "message"),
    [
        (Annotated[float, msgspec.Meta(ge=0, lt=1)], 1, "must be in [0, 1), got 1.0"),
        (Annotated[int, msgspec.Meta(gt=0, le=9)], 10, "must be in (0, 9], got 10"),
        (Annotated[int, msgspec.Meta(le=9)], 10, "must be <= 9, got 10"),
        (Annotated[int, msgspec.Meta(lt=9)], 10, "must be < 9, got 10"),
        (Annotated[int, msgspec.Meta(gt=0)], True, "must be an integer, got bool True"),
        (st.Text | None, "", "must be a non-empty string, got str ''"),
        (list[st.Text], "x", "must be a list of strings, got str 'x'"),
        (Annotated[list[int], msgspec.Meta(min_length=1)], [], "must not be empty"),
    ],
)
def test_the_words_for_each_constraint(annotation: object, value: object, message: str) -> None:
    assert st.problem(mi.type_info(annotation), value) == message


def test_default_settings_hold_every_objectives_defaults() -> None:
    settings = st.Settings()
    assert [settings.objectives.of(name) for name in OBJECTIVE_TABLES] == [cls() for cls in OBJECTIVE_TABLES.values()]
    assert (settings.train.max_steps, settings.grid.ranks, settings.resources.backend) == (100, [16, 8], "local")


def test_sbatch_option_values_may_hold_equals_signs() -> None:
    assert sbatch_own_option("--out=/x=y") == "--output"
    assert sbatch_own_option("--comment=a=b") is None


# Any value TOML can hold, under the keys a grid file knows (and a few it does not).
toml_values = hs.recursive(
    hs.booleans() | hs.integers(-(1 << 63), (1 << 63) - 1) | hs.floats() | hs.text(max_size=12),
    lambda inner: hs.lists(inner, max_size=4) | hs.dictionaries(hs.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
KEYS = sorted({key for cls in (*TABLES.values(), *OBJECTIVE_TABLES.values()) for key in cls.__struct_fields__})
tables = hs.dictionaries(hs.sampled_from([*KEYS, *OBJECTIVE_TABLES, "nope"]), toml_values, max_size=5)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=hs.dictionaries(hs.sampled_from([*TABLES, "objectives", "name", "nope"]), tables | toml_values, max_size=5))
def test_any_values_give_settings_or_one_line_naming_the_key(raw: dict[str, object]) -> None:
    path = Path("/nonexistent-prefwatch/g.toml")
    try:
        grid = _Validator(path, "", force=True).grid(raw)
    except GridError as exc:
        message = str(exc)
        assert message.startswith(f"{path}: ") and "\n" not in message and exc.key, message
        named = exc.key.split("] ")[-1]
        assert named in {*KEYS, *TABLES, *OBJECTIVE_TABLES, "objectives", "name"} or ": unknown " in message, message
    else:
        assert isinstance(grid.settings, st.Settings) and grid.cells
