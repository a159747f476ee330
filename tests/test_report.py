"""The report on the sample grid the launcher produced: the review, findings, verdict, in every format."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefwatch.cli import main

SAMPLE = Path(__file__).resolve().parent.parent / "sample_runs" / "tiny-demo"


def test_report_json_has_the_review_of_every_cell(capsys) -> None:
    status = main(["report", str(SAMPLE), "--format", "json"])
    report = json.loads(capsys.readouterr().out)
    assert [c["id"] for c in report["cells"]] == ["dpo-r16", "dpo-r8", "simpo-r16", "simpo-r8"]
    for cell in report["cells"]:
        review = cell["review"]
        assert cell["state"] == "finished" and cell["ingest"]["rejected"] == 0
        assert review["heldout_pairs"] == 100 and review["heldout_pairs_source"] == "per-pair"
        assert review["train_margin_late"] > review["train_margin_early"]
        assert 0 <= review["heldout_accuracy"] <= 1
    verdict = report["verdict"]
    assert verdict["objective"] in ("dpo", "simpo") and verdict["rank"] in (16, 8)
    assert status == (0 if verdict["decisive"] else 3)


def test_sample_grid_shows_what_the_tool_exists_to_catch(capsys) -> None:
    main(["report", str(SAMPLE), "--format", "json"])
    cells = json.loads(capsys.readouterr().out)["cells"]
    accuracies = [c["review"]["heldout_accuracy"] for c in cells]
    won = sorted(c["review"]["heldout_pairs_won"] for c in cells)
    assert 0.6 <= max(accuracies) <= 0.95
    assert won[-1] - won[0] >= 2
    assert any(f["kind"] == "overoptimization" for c in cells for f in c["findings"])


def test_markdown_and_terminal_agree_on_the_verdict(capsys) -> None:
    main(["report", str(SAMPLE), "--format", "json"])
    headline = json.loads(capsys.readouterr().out)["verdict"]
    main(["report", str(SAMPLE), "--format", "md"])
    markdown = capsys.readouterr().out
    main(["report", str(SAMPLE)])
    terminal = capsys.readouterr().out
    choice = f"{headline['objective']} r={headline['rank']}"
    assert f"### Verdict: {choice}" in markdown
    assert choice in terminal and "Brevity:" in terminal


def test_plot_draws_a_png(tmp_path: Path) -> None:
    target = tmp_path / "grid.png"
    main(["report", str(SAMPLE), "--plot", str(target), "--format", "json"])
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_text_from_logs_is_printed_literally(tmp_path: Path, capsys) -> None:
    import shutil

    hostile = tmp_path / "[bold red]dpo-r8\x1b[31m"
    hostile.mkdir()
    shutil.copy(SAMPLE / "cells" / "dpo-r8" / "metrics.jsonl", hostile / "metrics.jsonl")
    main(["report", str(tmp_path), "--heldout-pairs", "100"])
    out = capsys.readouterr().out
    assert "[bold red]dpo-r8\\x1b[31m" in out.replace("\n", "")
    assert "\x1b" not in out


# ---- readable at any width (issue 23): a number is never broken, narrow terminals stack ------------

CORPUS = Path(__file__).resolve().parent / "real_logs"
NUMBER = r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?"


def terminal_report(path: Path, width: int) -> tuple[str, list[list[str]]]:
    import re

    from rich.console import Console

    from prefwatch.analysis.analyse import analyse
    from prefwatch.ingest.discover import open_path
    from prefwatch.report.text import render_terminal, review_row

    grid = open_path(path)
    grid.poll()
    analysis = analyse(grid)
    console = Console(width=width, record=True, color_system=None)
    render_terminal(analysis, console)
    text = console.export_text()
    numbers = [re.findall(NUMBER, value) for cell in analysis.cells for value in review_row(cell)[1:]]
    return text, numbers


@pytest.mark.parametrize("width", [120, 80, 60, 40])
def test_every_number_of_the_review_is_whole_at_any_width(width: int) -> None:
    """The real corpus (names of 30+ characters, margins like -0.00396/-0.00678): at 80 columns the table
    broke '-0.0441/-' from '26.8'. Every number of every review value now appears whole on one line of
    the output, and no line is wider than the terminal."""
    import re

    text, numbers = terminal_report(CORPUS, width)
    lines = text.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= width
    found = {n for line in lines for n in re.findall(NUMBER, line)}
    assert {n for value in numbers for n in value} <= found
    stacked = "train margin early→late" in text  # the stacked layout's label
    assert stacked is (width < 80)


def test_report_help_lists_the_exit_statuses(capsys) -> None:
    from prefwatch.cli import EXIT_BAD_INPUT, EXIT_NOT_DECISIVE, EXIT_OK

    with pytest.raises(SystemExit):
        main(["report", "--help"])
    help_text = capsys.readouterr().out
    assert "exit status:" in help_text
    for status in (EXIT_OK, EXIT_BAD_INPUT, EXIT_NOT_DECISIVE):
        assert re.search(rf"^\s+{status}\s+\S", help_text, re.MULTILINE), status


def test_json_path_is_the_path_given(capsys, monkeypatch) -> None:
    """A metrics.jsonl given by name, and a folder: the JSON says the path as given, not its parent."""
    monkeypatch.chdir(SAMPLE.parent.parent)
    given = SAMPLE / "cells" / "dpo-r16" / "metrics.jsonl"
    main(["report", str(given), "--format", "json"])
    assert json.loads(capsys.readouterr().out)["path"] == str(given)
    main(["report", "sample_runs/tiny-demo", "--format", "json"])
    assert json.loads(capsys.readouterr().out)["path"] == "sample_runs/tiny-demo"


# ---- a large review: Rich draws the header and the widest rows, the rest are written to match ------

NAMES = [
    *(f"dpo-r{rank}-seed{seed}" for rank in (8, 16) for seed in range(12)),
    "simpo-r8-a-folder-name-far-too-long-for-the-name-column-of-an-80-column-table",
    "dpo r8 a name with spaces that wraps between its words",
    "dpo-r8-学习率-β0.1",  # wide characters: two columns each
    "simpo-r16",
]


def review_outputs(tmp_path: Path, width: int, monkeypatch) -> tuple[str, str, list[int]]:
    """(the report as drawn, the report with every row drawn by Rich, the row counts of the tables Rich drew)."""
    import io
    import shutil

    from rich.console import Console

    from prefwatch.analysis.analyse import analyse
    from prefwatch.ingest.discover import open_path
    from prefwatch.report import text

    for name in NAMES:
        (tmp_path / name).mkdir(exist_ok=True)
        objective = "simpo" if name.startswith("simpo") else "dpo"
        shutil.copy(SAMPLE / "cells" / f"{objective}-r8" / "metrics.jsonl", tmp_path / name / "metrics.jsonl")
    grid = open_path(tmp_path)
    grid.poll()
    analysis = analyse(grid, heldout_pairs=100, now=0)

    def drawn(colour: bool) -> str:
        console = Console(
            file=io.StringIO(), width=width, force_terminal=colour, color_system="truecolor" if colour else None
        )
        text.render_terminal(analysis, console)
        return console.file.getvalue()

    tables: list[int] = []
    real_table = text.review_table
    monkeypatch.setattr(text, "review_table", lambda a, rows: tables.append(len(rows)) or real_table(a, rows))
    fast = drawn(False) + drawn(True)
    with monkeypatch.context() as patched:
        patched.setattr(text, "ReviewTable", lambda a, rows, probe: real_table(a, rows))
        rich = drawn(False) + drawn(True)
    return fast, rich, tables


@pytest.mark.parametrize("width", [200, 120, 100, 80])
def test_a_large_review_is_drawn_exactly_as_rich_draws_it(tmp_path: Path, width: int, monkeypatch) -> None:
    """Names that fold, wrap between words and hold wide characters, numbers split over two lines (80
    columns), plain and in colour: byte for byte what Rich draws row by row, while Rich itself
    draws only the few rows that set the widths (the probe) and the fit."""
    fast, rich, tables = review_outputs(tmp_path, width, monkeypatch)
    assert fast == rich
    assert "学习率" in fast and "folder-name" in fast
    assert tables and max(tables) < len(NAMES) / 2  # the full table was never handed to Rich


# Text as it reaches the report (plain(): no controls), with what makes wrapping hard: runs of spaces,
# words longer than a line, wide (CJK) and zero-width combining characters.
WORDS = st.lists(
    st.sampled_from([*"ab-/.:", " ", "  ", "学", "é", "e\u0301", "→", "β", "abcdefghij"]), max_size=30
).map("".join)


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(
        st.tuples(
            st.sampled_from(["", "warn  ", "error ", "info  "]), st.sampled_from([None, "yellow", "bold red"]), WORDS
        ),
        max_size=8,
    ),
    width=st.integers(4, 60),
    colour=st.booleans(),
)
def test_lines_are_drawn_as_rich_draws_their_text(lines, width: int, colour: bool) -> None:
    """The Cells and Findings blocks (thousands of lines at a thousand cells) are wrapped without Rich's
    Text machinery: the output is byte for byte Rich's, at any width, plain and in colour."""
    import io

    from rich.console import Console, Group

    from prefwatch.report.text import Lines

    block = Lines(lines)

    def drawn(renderable) -> str:
        console = Console(
            file=io.StringIO(), width=width, force_terminal=colour, color_system="truecolor" if colour else None
        )
        console.print(Group(renderable))
        return console.file.getvalue()

    assert drawn(block) == drawn(block.text())


@settings(max_examples=500, deadline=None)
@given(
    line=st.lists(st.sampled_from(["a", "b-", "/.:", " ", "   ", "abcdefghij", "x" * 25]), max_size=40).map("".join),
    width=st.integers(1, 60),
)
def test_ascii_lines_break_where_rich_breaks_them(line: str, width: int) -> None:
    """A long printable ASCII line (most of a large report's findings) is divided without measuring
    cells: at the same offsets as Rich's own division, long words folded, runs of spaces kept."""
    from rich._wrap import divide_line

    from prefwatch.report.text import ascii_breaks

    assert ascii_breaks(line, width) == divide_line(line, width, fold=True)
