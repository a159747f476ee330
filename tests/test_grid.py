"""Grid validation: good files resolve to cells; each broken file gets one line naming file, line and key,
exit status 2, and nothing is created."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from prefwatch.cli import main
from prefwatch.files.grid import GridError, load_grid

ROOT = Path(__file__).resolve().parent.parent
BAD = sorted((Path(__file__).parent / "grids" / "bad").glob("*.toml"))


def expectations(path: Path) -> list[str]:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), path
    return [part.strip() for part in first.removeprefix("# expect: ").split("|")]


def test_the_corpus_is_large_enough() -> None:
    assert len(BAD) >= 30


def test_example_grid_resolves_to_four_cells() -> None:
    grid = load_grid(ROOT / "examples" / "tiny-grid.toml")
    assert [c.id for c in grid.cells] == ["dpo-r16", "dpo-r8", "simpo-r16", "simpo-r8"]
    cell = msgspec.to_builtins(grid.cells[2].record(grid.name))
    assert cell["objective"] == "simpo" and cell["rank"] == 16
    assert set(cell["objective_params"]) == {"beta", "gamma", "sft_weight"}
    assert "seeds" not in cell["train"]


def test_seeds_multiply_cells_and_name_them(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text('name = "s"\n[train]\nseeds = [1, 2]\n[grid]\nobjectives = ["dpo"]\nranks = [8]\n')
    assert [c.id for c in load_grid(path).cells] == ["dpo-r8-seed1", "dpo-r8-seed2"]


def test_relative_data_files_resolve_beside_the_grid(tmp_path: Path) -> None:
    (tmp_path / "pairs.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    path = tmp_path / "g.toml"
    path.write_text('[data]\nname = "pairs.jsonl"\n')
    grid = load_grid(path)
    assert grid.name == "g"
    assert grid.settings.data.name == str(tmp_path / "pairs.jsonl")


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_grid_is_one_clear_line(path: Path) -> None:
    line, key, *rest = expectations(path)
    with pytest.raises(GridError) as caught:
        load_grid(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:{line.removeprefix('line ')}: "), message
    assert f" {key}" in message or message.split(": ")[1] == key, message
    for fragment in rest:
        assert fragment in message, message


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_grid_creates_nothing(path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"
    assert main(["launch", str(path), "--out", str(out), "--detach"]) == 2
    err = capsys.readouterr().err
    assert re.match(rf"prefwatch: {re.escape(str(path))}:\d+: ", err), err
    assert err.count("\n") == 1
    assert not out.exists()


def test_tilde_in_a_data_path_is_the_home_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "pairs.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    path = tmp_path / "g.toml"
    path.write_text('[data]\nname = "~/pairs.jsonl"\n')
    assert load_grid(path).settings.data.name == str(tmp_path / "home" / "pairs.jsonl")


@pytest.mark.parametrize(
    ("option", "own"),
    [
        ("--qos=high", None),
        ("--exclusive", None),
        ("--export=ALL", None),
        ("-pgpu", None),  # -p takes its value attached: "gpu", not -g -p -u
        ("-n4", None),
        ("-xo1", None),  # -x's value is "o1" (nodes to exclude), not -o
        ("--outp=/x", "--output"),
        ("--out=/x", "--output"),
        ("--o=/x", "--output"),  # ambiguous to sbatch (--output, --open-mode): an error there, refused here
        ("-o/x", "--output"),
        ("-vo/x", "--output"),  # -v takes no value: the o is the next option
        ("-Jx", "--job-name"),
        ("--chd=/tmp", "--chdir"),
        ("--wra=true", "--wrap"),
        ("--open-mode=truncate", "--open-mode"),
        ("--pars", "--parsable"),
        ("-a1-3", "--array"),
    ],
)
def test_sbatch_abbreviations_of_prefwatchs_own_options(option: str, own: str | None) -> None:
    from prefwatch.files.grid import sbatch_own_option

    assert sbatch_own_option(option) == own


def test_beta_and_learning_rate_sweeps_multiply_cells_with_stable_safe_ids(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text(
        'name = "sweep"\n[train]\nseeds = [0, 1]\n[grid]\nobjectives = ["dpo", "simpo"]\nranks = [4, 8]\n'
        "betas = [0.1, 0.5]\nlearning_rates = [5e-5, 1e-4]\n"
    )
    grid = load_grid(path)
    assert len(grid.cells) == 2 * 2 * 2 * 2 * 2
    ids = [c.id for c in grid.cells]
    assert ids[:3] == ["dpo-r4-b0.1-lr5e-05-seed0", "dpo-r4-b0.1-lr5e-05-seed1", "dpo-r4-b0.1-lr0.0001-seed0"]
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"[A-Za-z0-9._-]+", i) for i in ids)
    cell = next(c for c in grid.cells if c.id == "simpo-r8-b0.5-lr0.0001-seed1").record(grid.name)
    assert cell.objective_params.beta == 0.5 and cell.objective_params.gamma == 1.0
    assert cell.train.learning_rate == 1e-4
    # One value is no sweep: the id stays as without the key, the value still applies.
    path.write_text('[grid]\nobjectives = ["dpo"]\nranks = [8]\nbetas = [0.3]\n')
    (only,) = load_grid(path).cells
    assert only.id == "dpo-r8" and only.record("g").objective_params.beta == 0.3
