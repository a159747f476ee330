"""The command line: fast help that loads no heavy library; clear errors; version."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "transformers", "trl", "peft", "datasets", "textual")


@pytest.mark.parametrize("argv", [["--help"], ["launch", "--help"], ["report", "--help"], ["--version"]])
def test_help_imports_no_heavy_library(argv: list[str]) -> None:
    probe = (
        "import sys, json\n"
        "from prefwatch.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == []


def test_python_dash_m_runs_the_cli() -> None:
    result = subprocess.run([sys.executable, "-m", "prefwatch", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("prefwatch ")


def test_report_on_a_missing_path_is_bad_input(tmp_path, capsys) -> None:
    from prefwatch.cli import main

    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_stop_refuses_a_folder_that_is_not_a_run(tmp_path, capsys) -> None:
    from prefwatch.cli import main

    assert main(["stop", str(tmp_path)]) == 2
    assert "not a prefwatch run directory" in capsys.readouterr().err


def test_bash_completion_completes_commands_and_options(tmp_path) -> None:
    script = subprocess.run(
        [sys.executable, "-m", "prefwatch", "completion", "bash"], capture_output=True, text=True, check=True
    ).stdout
    (tmp_path / "c.sh").write_text(script)
    probe = (
        f"source {tmp_path / 'c.sh'}\n"
        'COMP_WORDS=(prefwatch re); COMP_CWORD=1; _prefwatch; echo "${COMPREPLY[@]}"\n'
        'COMP_WORDS=(prefwatch launch --he); COMP_CWORD=2; _prefwatch; echo "${COMPREPLY[@]}"\n'
    )
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["replay report", "--headless --help"]


def test_init_writes_a_grid_that_validates_and_never_overwrites(tmp_path, capsys) -> None:
    from prefwatch.cli import main
    from prefwatch.files.grid import load_grid

    target = tmp_path / "grid.toml"
    assert main(["init", "-o", str(target)]) == 0
    grid = load_grid(target)
    assert grid.name == "tiny-demo" and len(grid.cells) == 4
    assert main(["init", "-o", str(target), "--model", "Qwen/Qwen2.5-0.5B-Instruct"]) == 2
    assert "exists already" in capsys.readouterr().err


def test_init_fits_the_gpus_it_finds() -> None:
    from prefwatch.run.init import Gpu, render

    big = render("Qwen/Qwen2.5-0.5B-Instruct", "trl-lib/ultrafeedback_binarized", "q", [Gpu(0, "H100", 80_000, 9.0)])
    assert 'dtype = "bf16"' in big and "cells_per_device = 2" in big and "batch_size = 6" in big
    old = render("Qwen/Qwen2.5-0.5B-Instruct", None, "q", [Gpu(0, "T4", 15_000, 7.5)])
    assert 'dtype = "fp16"' in old and "cells_per_device = 1" in old


def test_labels_place_cells_whose_folders_do_not_say(tmp_path, capsys) -> None:
    import shutil
    from pathlib import Path

    from prefwatch.cli import main

    sample = Path(__file__).resolve().parent.parent / "sample_runs" / "tiny-demo" / "cells"
    for name, source in (("run-a", "dpo-r8"), ("run-b", "simpo-r8")):
        shutil.copy(sample / source / "metrics.jsonl", (tmp_path / name).mkdir() or tmp_path / name / "metrics.jsonl")
    main(["report", str(tmp_path), "--format", "json", "--heldout-pairs", "100"])
    unlabelled = json.loads(capsys.readouterr().out)["cells"]
    # The objective is read from the logs (DPO's rewards start at 0, SimPO's are 2 × the log-probability);
    # nothing says the rank.
    assert [(c["objective"], c["objective_source"], c["rank"]) for c in unlabelled] == [
        ("dpo", "logs", None),
        ("simpo", "logs", None),
    ]
    main(["report", str(tmp_path), "--format", "json", "--label", "run-a=dpo:8", "--label", "run-b=simpo:8"])
    cells = json.loads(capsys.readouterr().out)["cells"]
    assert [(c["objective"], c["rank"]) for c in cells] == [("dpo", 8), ("simpo", 8)]
    assert main(["report", str(tmp_path), "--label", "run-a"]) == 2
    assert "NAME=OBJECTIVE:RANK" in capsys.readouterr().err


def test_no_color_is_honoured() -> None:
    def report(**env: str) -> str:
        import os

        return subprocess.run(
            [sys.executable, "-m", "prefwatch", "report", "sample_runs/tiny-demo"],
            capture_output=True,
            text=True,
            env={**os.environ, "FORCE_COLOR": "1", **env},
            cwd=Path(__file__).resolve().parent.parent,
        ).stdout

    colour = "\x1b[3"  # a foreground colour sequence
    assert colour in report()
    assert colour not in report(NO_COLOR="1")
