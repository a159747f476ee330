"""Headless renderings of a grid's analysis: the terminal (Rich), Markdown, JSON.

Cell ids, metric names and messages come from logs: they are rendered as plain text, never markup. In
Markdown every character that Markdown or the HTML it passes through would read is escaped
(``textsafe.markdown_literal``): the only links, images or emphasis are prefwatch's own.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from prefwatch.analysis.analyse import CellAnalysis, GridAnalysis, best_lines
from prefwatch.analysis.bands import seed_lines
from prefwatch.analysis.peak import at_line
from prefwatch.core.decide import Verdict
from prefwatch.core.diagnose import brevity_summary
from prefwatch.core.factors import (
    BETA,
    DATA,
    GAMMA,
    HELDOUT,
    LOSS_TYPE,
    LR,
    MODEL,
    OBJECTIVE,
    RANK,
    SEED,
    Origin,
    varying,
)
from prefwatch.core.factors import text as factor_text
from prefwatch.core.objectives import agrees, said_by
from prefwatch.core.textsafe import markdown_code, markdown_literal, plain
from prefwatch.ingest.discover import skipped_lines as folders_not_read

if TYPE_CHECKING:  # Rich is imported by the terminal rendering only: JSON and Markdown go without it
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

# Three-line headers keep the table inside 80 columns. No column but the cell name wraps, so no number is
# ever broken; where even that does not fit, the paired columns take two lines a row, then the cells stack.
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


def provenance(cell: CellAnalysis, shown: Sequence[str] = ()) -> str:
    """Where the cell's objective, rank and other factors came from, and what its logs show, in one line."""
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
    return f"{source.id}: {'; '.join([objective, rank, *factor_words(cell, shown), *source.factor_problems])}"


# Factors the Cells section names for every cell where known (others only where they vary).
NAMED_FACTORS = (BETA, GAMMA, LOSS_TYPE, LR, SEED, MODEL, DATA, HELDOUT)


def factor_words(cell: CellAnalysis, shown: Sequence[str] = ()) -> list[str]:
    """The cell's factors but its objective and rank, by where each was read: "β=0.2, lr=1.1e-05 from
    folder name"; ``shown`` adds the factors that vary across the grid (batch size, steps, …)."""
    names = [*NAMED_FACTORS, *(n for n in shown if n not in NAMED_FACTORS and n not in (OBJECTIVE, RANK))]
    by_origin: dict[str, list[str]] = {}
    for name in names:
        value = cell.factors.values.get(name)
        if value is None or (name == HELDOUT and value.origin == Origin.EVALUATIONS):
            continue  # the held-out size from the evaluations is in the table already
        by_origin.setdefault(str(value.origin), []).append(factor_text(name, value.value))
    return [f"{', '.join(values)} from {origin}" for origin, values in by_origin.items()]


def swept(analysis: GridAnalysis) -> list[str]:
    """The factors that vary across the analysis' cells."""
    return varying([c.factors for c in analysis.cells], skip={SEED})


def skipped_lines(analysis: GridAnalysis) -> list[str]:
    """The folders not read, and why; thousands of them (``report /proc``) end in one line that counts the rest."""
    return [f"not read: {line}" for line in folders_not_read(analysis.grid.skipped)]


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


# Columns whose values join two numbers ("0.0566→0.233", "-0.0441/-26.8"): where the table does not fit
# on one line a row, each number goes on a line of its own, broken only after the sign that joins them.
PAIRED_COLUMNS = {3: "→", 4: "/"}
# The cell name wraps (it is text, not a number) down to this many columns.
NAME_MIN_WIDTH = 8


def split_pairs(rows: list[list[str]]) -> list[list[str]]:
    """The rows with each number of the paired columns on its own line, broken after the joining sign."""
    return [
        [
            v.replace(PAIRED_COLUMNS[i], PAIRED_COLUMNS[i] + "\n", 1) if i in PAIRED_COLUMNS else v
            for i, v in enumerate(row)
        ]
        for row in rows
    ]


def review_table(analysis: GridAnalysis, shown: list[list[str]]) -> Table:
    """The review as a table of the rows ``shown`` (split_pairs or not). Every column but the cell name is
    no_wrap at its widest line: a number is never broken."""
    from rich import box
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
    for index, name in enumerate(COLUMNS):
        if index == 0:
            table.add_column(name, overflow="fold", min_width=min(NAME_MIN_WIDTH, max(len(r[0]) for r in shown)))
            continue
        lines = name.split("\n") + [line for row in shown for line in row[index].split("\n")]
        table.add_column(name, no_wrap=True, min_width=max(len(line) for line in lines))
    for row in shown:
        table.add_row(*(Text(v) for v in row))
    return table


def stacked_review(rows: list[list[str]]) -> Text:
    """The review one block per cell, for a terminal too narrow for the table: label and value pairs
    that wrap between pairs, never inside a number."""
    from rich.text import Text

    text = Text()
    for row in rows:
        name, state, step, margins, rewards, margin, accuracy, pairs = row
        text.append(f"{name}\n", style="bold")
        text.append(f"  {state}, step {step}\n")
        text.append(f"  train margin early→late {margins}\n")
        text.append(f"  late reward ch./rej. {rewards}\n")
        text.append(f"  held-out margin {margin}, accuracy {accuracy}, pairs {pairs}\n")
    return text


def widest_rows(rows: list[list[str]]) -> list[list[str]]:
    """The rows that set the table's column widths: for each column, the row with its longest line and
    the row with its longest word. The table of these fits exactly when the table of all rows does
    (Rich sizes a column by the largest of its cells' widths), and costs a few rows to draw instead of
    a thousand: the fit was drawn once in full before the table itself, a third of a large report."""
    from rich.cells import cell_len  # widths as the terminal counts them (a CJK character takes two)

    chosen: dict[int, None] = {}
    for column in range(len(rows[0]) if rows else 0):
        lines = [max((cell_len(line) for line in row[column].split("\n")), default=0) for row in rows]
        words = [max((cell_len(word) for word in row[column].split()), default=0) for row in rows]
        chosen[lines.index(max(lines))] = None
        chosen[words.index(max(words))] = None
    return [rows[index] for index in sorted(chosen)]


def fits(table: Table, rows: list[list[str]], width: int) -> bool:
    """Whether ``table`` drawn ``width`` columns wide shows every value whole: Rich crops a table wider
    than the terminal silently, dropping columns at the right or cutting their values."""
    import io

    from rich.console import Console

    console = Console(file=io.StringIO(), width=width, color_system=None, legacy_windows=False)
    with console.capture() as capture:
        console.print(table)
    drawn = capture.get()
    if max((len(line.rstrip()) for line in drawn.splitlines()), default=0) > width:
        return False
    words = {line for row in rows for value in row[1:] for line in value.split("\n")}
    words |= {part for name in COLUMNS for part in name.split("\n")}  # every column is there, headed
    words |= {row[0][:NAME_MIN_WIDTH] for row in rows}  # and the names, folded at worst
    lines = [line.strip() for line in drawn.splitlines()]
    return all(any(word in line for line in lines) for word in words)


class ReviewTable:
    """The review table of ``rows`` as Rich draws it, its body rows written here rather than by Rich.

    Rich draws a table cell by cell (measure, wrap, pad: most of a thousand-row report's drawing). The
    rows that set the widths (``probe``, see ``widest_rows``) are drawn by Rich, title, header and
    caption included; where the lines written here for the probe's rows are exactly Rich's, with no
    style, every row is written so, between Rich's header and caption. Anything else (a width Rich
    shrinks otherwise, a character it counts otherwise) is drawn by Rich in full, as before.
    """

    def __init__(self, analysis: GridAnalysis, rows: list[list[str]], probe: list[list[str]]) -> None:
        self.analysis, self.rows, self.probe = analysis, rows, probe

    def body_lines(self, rows: list[list[str]], table_width: int, console: Console) -> list[str]:
        """The rows as lines of a table ``table_width`` wide: every column at its widest line but the
        name's, which takes the rest and folds a longer name as Rich does (only it wraps)."""
        from rich import box
        from rich.cells import cell_len
        from rich.text import Text

        widths = [
            max(cell_len(line) for value in [name, *(row[index] for row in self.probe)] for line in value.split("\n"))
            for index, name in enumerate(COLUMNS)
        ]
        chrome = len(widths) + 1 + len(widths) - 1  # the edges and dividers, and one space's padding between columns
        widths[0] = max(1, table_width - chrome - sum(widths[1:]))
        left, divider, right = box.SIMPLE_HEAD.mid_left, box.SIMPLE_HEAD.mid_vertical, box.SIMPLE_HEAD.mid_right
        last = len(widths) - 1
        lines = []
        for row in rows:
            name = row[0]
            names = (
                [name]
                if cell_len(name) <= widths[0]
                else [line.plain for line in Text(name).wrap(console, widths[0], overflow="fold")]
            )
            cells = [names, *(value.split("\n") for value in row[1:])]
            for line_no in range(max(len(cell) for cell in cells)):
                parts = []
                for index, (cell, width) in enumerate(zip(cells, widths)):
                    text = cell[line_no] if line_no < len(cell) else ""
                    parts.append(text + " " * (max(0, width - cell_len(text)) + (index < last)))
                lines.append(left + divider.join(parts) + right)
        return lines

    def __rich_console__(self, console: Console, options: Any) -> Any:
        from rich.cells import cell_len
        from rich.segment import Segment

        drawn = console.render_lines(review_table(self.analysis, self.probe), options, pad=False, new_lines=False)
        texts = ["".join(segment.text for segment in line) for line in drawn]
        table_width = max((cell_len(text) for text in texts), default=0)
        mine = self.body_lines(self.probe, table_width, console)
        start = next((i for i in range(len(texts)) if texts[i : i + len(mine)] == mine), None)
        if start is None or any(segment.style for line in drawn[start : start + len(mine)] for segment in line):
            yield from console.render(review_table(self.analysis, self.rows), options)
            return
        new_line = Segment.line()
        for line in drawn[:start]:
            yield from line
            yield new_line
        for text in self.body_lines(self.rows, table_width, console):
            yield Segment(text)
            yield new_line
        for line in drawn[start + len(mine) :]:
            yield from line
            yield new_line


class Lines:
    """Lines of the report, each a styled prefix (may be empty) and plain text, drawn exactly as Rich
    draws a Text of them: wrapped at the width by Rich's own word division, a word longer than a line
    folded, then an empty line (the Text ends with a newline).

    A Text of thousands of lines is split into a Text per line and each divided into more Text objects
    (a tenth of a second per thousand wrapped lines); here a line is divided as a string, and a short
    ASCII line (which Rich leaves whole) is not divided at all. With options other than the report's
    (no wrapping, another overflow or justification) or a line break inside a line, Rich draws the
    Text itself. tests/test_report.py compares both on random text, widths and styles.
    """

    def __init__(self, lines: Sequence[tuple[str, str | None, str]]) -> None:
        self.lines = lines  # (prefix, its style, the rest)

    def text(self) -> Text:
        from rich.text import Text

        text = Text()
        for prefix, style, rest in self.lines:
            if prefix:
                text.append(prefix, style=style)
            text.append(f"{rest}\n")
        return text

    def __rich_console__(self, console: Console, options: Any) -> Any:
        from rich._wrap import divide_line
        from rich.cells import cell_len, set_cell_size
        from rich.segment import Segment

        if (
            options.no_wrap
            or options.overflow not in (None, "fold")
            or options.justify not in (None, "default")
            or any("\n" in prefix or "\n" in rest for prefix, _, rest in self.lines)
        ):
            yield from console.render(self.text(), options)
            return
        width = options.max_width
        new_line = Segment.line()
        for prefix, style, rest in self.lines:
            line = prefix + rest
            if line.isascii() and len(line) <= width and line.isprintable():
                starts = [0]
                pieces = [line]
            else:
                breaks = ascii_breaks(line, width) if line.isascii() and line.isprintable() else None
                starts = [0, *(divide_line(line, width, fold=True) if breaks is None else breaks)]
                pieces = [line[a:b] for a, b in zip(starts, [*starts[1:], len(line)])]
            for start, piece in zip(starts, pieces):
                if len(piece) > width:  # Text.rstrip_end: whitespace past the width goes
                    spaces = len(piece) - len(piece.rstrip())
                    piece = piece[: len(piece) - min(spaces, len(piece) - width)]
                if cell_len(piece) > width:  # Text.truncate, folding
                    piece = set_cell_size(piece, width)
                styled = max(0, min(len(prefix) - start, len(piece)))
                if styled:
                    yield Segment(piece[:styled], console.get_style(style or ""))
                if piece[styled:]:
                    yield Segment(piece[styled:])
                yield new_line
        yield new_line


_WORD = re.compile(r"\s*\S+\s*")


def ascii_breaks(line: str, width: int) -> list[int]:
    """Rich's word division (rich._wrap.divide_line, folding) of a printable ASCII line, where a
    character is one cell: the same breaks without measuring each word's cells (a report of 1,000
    cells divides thousands of long finding lines; tests/test_report.py compares the two)."""
    breaks: list[int] = []
    offset = 0
    for match in _WORD.finditer(line):
        start, end = match.span()
        word = match.group(0)
        length = len(word.rstrip())
        if width - offset >= length:
            offset += end - start
        elif length > width:
            chunks = range(0, end - start, width)
            for index in chunks:
                if start + index:
                    breaks.append(start + index)
            offset = min(width, end - start - chunks[-1])
        elif offset and start:
            breaks.append(start)
            offset = end - start
    return breaks


def render_terminal(analysis: GridAnalysis, console: Console) -> None:
    from rich.console import Group
    from rich.text import Text

    rows = [review_row(cell) for cell in analysis.cells]
    review: Any = None
    for shown in (rows, split_pairs(rows)) if rows else ():
        probe = widest_rows(shown)
        if fits(review_table(analysis, probe), probe, console.width):
            review = ReviewTable(analysis, shown, probe) if len(shown) > len(probe) else review_table(analysis, shown)
            break
    if review is None:
        title = Text(f"prefwatch report: {plain(analysis.grid.name)}\n")
        notes = "".join(f"{note}\n" for note in pair_notes(analysis))
        review = Group(title, stacked_review(rows), Text(notes)) if rows else title
    parts: list[Any] = [review]
    varied = swept(analysis)  # once for the grid: per cell, it made a report of 1,000 cells quadratic
    cells = [("", None, plain(provenance(cell, varied))) for cell in analysis.cells]
    cells += [("", None, plain(line)) for line in skipped_lines(analysis)]
    parts += [Text("Cells", style="bold"), Lines(cells)]
    findings = []
    for cell in analysis.cells:
        for finding in cell.diagnosis.findings:
            style = {"error": "bold red", "warn": "yellow"}.get(finding.severity, "cyan")
            at = f" @ step {finding.step}" if finding.step is not None else ""
            rest = f"{plain(cell.source.id)} {finding.kind}{at}: {plain(finding.message)}"
            findings.append((f"{finding.severity:5} ", style, rest))
    if findings:
        parts += [Text("Findings", style="bold"), Lines(findings)]
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
    for depth, line in verdict_items(verdict):
        text.append(f"{'    ' * depth}  • {plain(line)}\n")
    return text


def verdict_items(verdict: Verdict, depth: int = 0) -> list[tuple[int, str]]:
    """The verdict's evidence as (depth, line): reasons, paired comparisons, each factor's effect, the
    factor that decides the most, what would decide it; a group decided apart nests its own below."""
    items = [(depth, reason) for reason in verdict.reasons]
    items += [(depth, comparison.describe()) for comparison in verdict.comparisons]
    shown = {effect.factor for effect in verdict.factor_effects}
    items += [(depth, f"held-out accuracy by {k}: {v}") for k, v in verdict.effects.items() if k not in shown]
    items += [(depth, f"effect of {effect.describe()}") for effect in verdict.factor_effects]
    if verdict.decides:
        items.append((depth, verdict.decides))
    items += [(depth, f"would decide it: {need}") for need in verdict.needs]
    for group in verdict.groups:
        cells = f"{len(group.cells)} cell" + ("s" if len(group.cells) != 1 else "")
        items.append((depth, f"{group.label} ({cells}): {group.verdict.headline}"))
        items += verdict_items(group.verdict, depth + 1)
    return items


def render_markdown(analysis: GridAnalysis) -> str:
    lines = [f"## prefwatch report: {_md(analysis.grid.name)}", ""]
    lines.append("| " + " | ".join(name.replace("-\n", "-").replace("\n", " ") for name in COLUMNS) + " |")
    lines.append("|" + "---|" * len(COLUMNS))
    for cell in analysis.cells:
        lines.append("| " + " | ".join(_md(v) for v in review_row(cell)) + " |")
    lines += [f"\n_{note}_" for note in pair_notes(analysis)]
    lines += ["", "### Cells", ""]
    varied = swept(analysis)
    lines += [f"- {_md(provenance(c, varied))}" for c in analysis.cells]
    lines += [f"- {_md(line)}" for line in skipped_lines(analysis)]
    findings = [(c, f) for c in analysis.cells for f in c.diagnosis.findings]
    if findings:
        lines += ["", "### Findings", ""]
        for cell, f in findings:
            at = f" (step {f.step})" if f.step is not None else ""
            lines.append(f"- **{f.severity}** {markdown_code(cell.source.id)} {_md(f.kind)}{at}: {_md(f.message)}")
    lines += [f"\n**Brevity:** {_md(line)}" for line in brevity_lines(analysis)]
    seeds = seed_lines(analysis.cells)
    if seeds:
        lines += ["", "### Seeds", "", *(f"- {_md(line)}" for line in seeds)]
    best = best_lines(analysis.cells, analysis.grid.root)
    if best:
        lines += ["", "### Best checkpoints", "", *(f"- {_md(line)}" for line in best)]
    verdict = analysis.verdict
    lines += ["", f"### Verdict: {_md(verdict.headline)}", "", f"_{at_line(analysis.at)}_", ""]
    lines += [f"{'  ' * depth}- {_md(line)}" for depth, line in verdict_items(verdict)]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    """Text from logs (and lines that hold some) as Markdown that renders as exactly that text."""
    return markdown_literal(text)


def render_json(analysis: GridAnalysis, path: str | None = None) -> str:
    """Strict JSON (RFC 8259): NaN and infinities from the logs, data.json or cell.json become null.
    ``path`` is the path as the user gave it (a file, a folder, relative or not); else the grid's root."""
    document = analysis.to_json()
    if path is not None:
        document["path"] = path
    return json.dumps(json_safe(document), indent=2, allow_nan=False, default=str)


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
