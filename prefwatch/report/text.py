"""Headless renderings of a grid's analysis: the terminal (Rich), Markdown, JSON.

Cell ids, metric names and messages come from logs: they are rendered as plain text, never markup.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from prefwatch.analysis.analyse import CellAnalysis, GridAnalysis, best_lines
from prefwatch.analysis.bands import seed_lines
from prefwatch.analysis.peak import at_line
from prefwatch.core.diagnose import brevity_summary
from prefwatch.core.objectives import agrees, said_by
from prefwatch.core.textsafe import plain

if TYPE_CHECKING:  # Rich is imported by the terminal rendering only: JSON and Markdown go without it
    from rich.console import Console
    from rich.text import Text

# Three-line headers keep the table inside 80 columns. The decision columns (state, step and the
# held-out ones) are never cut: the cell name and the train columns wrap instead.
COLUMNS = (
    "cell",
    "state",
    "step",
    "train\nmargin\nearly→late",
    "late\nreward\nch./rej.",
    "held-\nout\nmargin",
    "held-\nout\nacc.",
    "held-\nout\npairs",
)
DECISION_COLUMNS = frozenset({1, 2, 5, 6, 7})
PAIR_SOURCES = {
    "data.json": "held-out size from the job's data.json; pairs won = accuracy × size",
    "given": "held-out size from --heldout-pairs; pairs won = accuracy × size",
    "estimated": "held-out size estimated from eval_samples_per_second × eval_runtime",
}


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def review_row(cell: CellAnalysis) -> list[str]:
    r = cell.diagnosis.review
    source = cell.source
    step = f"{last_step(cell)}" + (f"/{source.max_steps}" if source.max_steps else "")
    pairs = "–"
    if r.heldout_pairs_won is not None and r.heldout_pairs:
        pairs = f"{r.heldout_pairs_won}/{r.heldout_pairs}"
    return [
        plain(source.id),
        plain(cell.status.describe() if cell.state != "stalled" else "stalled"),
        step,
        f"{_num(r.train_margin_early)}→{_num(r.train_margin_late)}",
        f"{_num(r.late_chosen)}/{_num(r.late_rejected)}",
        _num(r.heldout_margin),
        "–" if r.heldout_accuracy is None else f"{r.heldout_accuracy:.2f}",
        pairs,
    ]


def last_step(cell: CellAnalysis) -> int:
    """The last step trained: the end-of-training summary's when there is one (logged after the
    last train row), else the last row's."""
    end = cell.source.series.end_record or {}
    ended = [v for k, v in end.items() if k in ("global_step", "step") and isinstance(v, (int, float))]
    return max([cell.source.series.last_step, *(int(v) for v in ended)])


def pair_notes(analysis: GridAnalysis) -> list[str]:
    sources = {
        c.diagnosis.review.heldout_pairs_source or "per-pair"
        for c in analysis.cells
        if c.diagnosis.review.heldout_accuracy is not None
    }
    return [PAIR_SOURCES[s] for s in sorted(sources - {"per-pair"})]


def provenance(cell: CellAnalysis) -> str:
    """Where the cell's objective and rank came from, and what its logs show, in one line."""
    source, claim = cell.source, cell.source.claim
    said = source.inference.words
    if source.inference.objective is not None:
        objective = f"{source.objective} from the logs ({source.inference.evidence})"
        if source.inference.trainer:
            objective += f"; keys of {source.inference.trainer}"
        if claim is not None and agrees(claim, source.inference):
            objective += f"; {said_by(claim.objective_source)} agrees"
    elif source.objective is not None and claim is not None:
        objective = f"{source.objective} from the {claim.objective_source}; the logs: {said}"
    else:
        objective = f"objective unknown; the logs: {source.inference.evidence}"
        objective += f" (the folder name gave none: {claim.note})" if claim and claim.note else ""
    rank = f"r={source.rank} from {claim.rank_source}" if claim and source.rank is not None else "rank unknown"
    return f"{source.id}: {objective}; {rank}"


def skipped_lines(analysis: GridAnalysis) -> list[str]:
    return [f"not read: {where}: {why}" for where, why in analysis.grid.skipped]


def brevity_lines(analysis: GridAnalysis) -> list[str]:
    """One line per distinct data set (cells of a grid usually share theirs)."""
    lines: dict[str, list[str]] = {}
    for cell in analysis.cells:
        summary = brevity_summary(cell.source.data_stats)
        if summary:
            lines.setdefault(summary, []).append(cell.source.id)
    if len(lines) == 1:
        return list(lines)
    return [f"{', '.join(ids)}: {summary}" for summary, ids in lines.items()]


def render_terminal(analysis: GridAnalysis, console: Console) -> None:
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(
        title=Text(f"prefwatch report: {plain(analysis.grid.name)}"),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        pad_edge=False,
        collapse_padding=True,
        caption=Text("\n".join(pair_notes(analysis))) or None,
        caption_justify="left",
    )
    rows = [review_row(cell) for cell in analysis.cells]
    for index, name in enumerate(COLUMNS):
        if index in DECISION_COLUMNS:
            widest = max([len(part) for part in name.split("\n")] + [len(row[index]) for row in rows])
            table.add_column(name, no_wrap=True, min_width=widest)
        else:
            table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*(Text(v) for v in row))
    parts: list[Any] = [table]
    cells = Text()
    for cell in analysis.cells:
        cells.append(f"{plain(provenance(cell))}\n")
    for line in skipped_lines(analysis):
        cells.append(f"{plain(line)}\n")
    parts += [Text("Cells", style="bold"), cells]
    findings = Text()
    for cell in analysis.cells:
        for finding in cell.diagnosis.findings:
            style = {"error": "bold red", "warn": "yellow"}.get(finding.severity, "cyan")
            findings.append(f"{finding.severity:5} ", style=style)
            at = f" @ step {finding.step}" if finding.step is not None else ""
            findings.append(f"{plain(cell.source.id)} {finding.kind}{at}: {plain(finding.message)}\n")
    if findings:
        parts += [Text("Findings", style="bold"), findings]
    for line in brevity_lines(analysis):
        parts.append(Text(f"Brevity: {plain(line)}\n"))
    seeds = seed_lines(analysis.cells)
    if seeds:
        parts += [Text("Seeds", style="bold"), Text("".join(f"{plain(line)}\n" for line in seeds))]
    best = best_lines(analysis.cells, analysis.grid.root)
    if best:
        parts += [Text("Best checkpoints", style="bold"), Text("".join(f"{plain(line)}\n" for line in best))]
    parts += [Text("Verdict", style="bold"), Text(f"({at_line(analysis.at)})", style="dim"), verdict_text(analysis)]
    console.print(Group(*parts))


def verdict_text(analysis: GridAnalysis) -> Text:
    from rich.text import Text

    verdict = analysis.verdict
    text = Text()
    text.append(plain(verdict.headline) + "\n", style="bold green" if verdict.decisive else "bold yellow")
    for reason in verdict.reasons:
        text.append(f"  • {plain(reason)}\n")
    for comparison in verdict.comparisons:
        text.append(f"  • {plain(comparison.describe())}\n")
    for factor, effect in verdict.effects.items():
        text.append(f"  • held-out accuracy by {factor}: {plain(effect)}\n")
    for need in verdict.needs:
        text.append(f"  • would decide it: {plain(need)}\n")
    return text


def render_markdown(analysis: GridAnalysis) -> str:
    lines = [f"## prefwatch report: {_md(analysis.grid.name)}", ""]
    lines.append("| " + " | ".join(name.replace("-\n", "-").replace("\n", " ") for name in COLUMNS) + " |")
    lines.append("|" + "---|" * len(COLUMNS))
    for cell in analysis.cells:
        lines.append("| " + " | ".join(_md(v) for v in review_row(cell)) + " |")
    lines += [f"\n_{note}_" for note in pair_notes(analysis)]
    lines += ["", "### Cells", ""]
    lines += [f"- {_md(provenance(c))}" for c in analysis.cells]
    lines += [f"- {_md(line)}" for line in skipped_lines(analysis)]
    findings = [(c, f) for c in analysis.cells for f in c.diagnosis.findings]
    if findings:
        lines += ["", "### Findings", ""]
        for cell, f in findings:
            at = f" (step {f.step})" if f.step is not None else ""
            lines.append(f"- **{f.severity}** `{_md(cell.source.id)}` {f.kind}{at}: {_md(f.message)}")
    lines += [f"\n**Brevity:** {_md(line)}" for line in brevity_lines(analysis)]
    seeds = seed_lines(analysis.cells)
    if seeds:
        lines += ["", "### Seeds", "", *(f"- {_md(line)}" for line in seeds)]
    best = best_lines(analysis.cells, analysis.grid.root)
    if best:
        lines += ["", "### Best checkpoints", "", *(f"- {_md(line)}" for line in best)]
    verdict = analysis.verdict
    lines += ["", f"### Verdict: {_md(verdict.headline)}", "", f"_{at_line(analysis.at)}_", ""]
    lines += [f"- {_md(r)}" for r in verdict.reasons]
    lines += [f"- {_md(c.describe())}" for c in verdict.comparisons]
    lines += [f"- held-out accuracy by {k}: {_md(v)}" for k, v in verdict.effects.items()]
    lines += [f"- would decide it: {_md(n)}" for n in verdict.needs]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return plain(text).replace("|", "\\|").replace("\n", " ")


def render_json(analysis: GridAnalysis) -> str:
    """Strict JSON (RFC 8259): NaN and infinities from the logs, data.json or cell.json become null."""
    return json.dumps(json_safe(analysis.to_json()), indent=2, allow_nan=False, default=str)


# Deeper than this, a value copied from a data file (data.json's statistics) is not one prefwatch wrote.
MAX_JSON_DEPTH = 32


def json_safe(value: Any, depth: int = 0) -> Any:
    """``value`` with every float that JSON cannot hold (NaN, ±Infinity) as None, keys as strings,
    and anything nested deeper than MAX_JSON_DEPTH as None, so that encoding it cannot fail."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth >= MAX_JSON_DEPTH and isinstance(value, (dict, list, tuple)):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, depth + 1) for v in value]
    return value
