"""The report on the sample grid the launcher produced: the review, findings, verdict, in every format."""

from __future__ import annotations

import json
from pathlib import Path

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
