"""CompletionsScreen: what the selected cell's model writes, against what the reference wrote.

For each sampled held-out prompt: the prompt, the reference's answer (step 0, the adapter off), and
the answers at the last few evaluations under it, each with its length in tokens (``max`` when it ran
into max_new_tokens). Words an answer has that the reference's answer does not are highlighted. Every
text is data: shown through ``plain`` (escapes, controls and markup visible, never interpreted).
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.content import Content
from textual.screen import Screen
from textual.widgets import Footer, Static

from prefwatch.core.completions import Completion, Evaluation, new_words
from prefwatch.core.textsafe import plain
from prefwatch.tui.text import literal
from prefwatch.tui.updates import follow_cell
from prefwatch.view.model import CellView, CompletionsView

LABEL_WIDTH = 10


def summary(view: CompletionsView) -> str:
    """One line of figures: the mean length against the reference's and the data's, cut share, distinct-2."""
    parts = []
    last = view.recent[-1] if view.recent else None
    ref = view.reference
    if ref is not None and last is not None and ref.stats.mean > 0:
        parts.append(
            f"mean length {last.stats.mean:.1f} tokens at step {last.step} vs the reference's "
            f"{ref.stats.mean:.1f} ({last.stats.mean / ref.stats.mean:.2f}x)"
        )
    elif last is not None:
        parts.append(f"mean length {last.stats.mean:.1f} tokens at step {last.step}")
    if view.chosen_tokens is not None and view.rejected_tokens is not None:
        parts.append(f"data: chosen {view.chosen_tokens:.0f}, rejected {view.rejected_tokens:.0f}")
    if last is not None:
        parts.append(f"at max {last.stats.at_max:.0%}")
        if last.stats.distinct2 == last.stats.distinct2:  # not NaN
            parts.append(f"distinct-2 {last.stats.distinct2:.2f}")
    return " · ".join(parts) if parts else "no completions yet"


def highlighted(text: str, reference: str | None) -> Content:
    """``text`` shown literally, its words that the reference's answer lacks in bold reverse."""
    shown = plain(text)
    content = Content(shown)
    if reference is None:
        return content
    for start, end in new_words(shown, plain(reference)):
        content = content.stylize("bold reverse", start, end)
    return content


def answer_line(label: str, answer: Completion | None, reference: Completion | None) -> Content:
    if answer is None:
        return Content("").join([literal(label.ljust(LABEL_WIDTH), "$text-muted"), literal("(no answer)", "dim")])
    length = f"{answer.tokens}{'' if answer.eos else ' max'}"
    text = highlighted(answer.text, reference.text if reference is not None else None)
    return Content("").join(
        [
            literal(label.ljust(LABEL_WIDTH), "$text-muted"),
            literal(f"{length:>7} ", "$text-primary"),
            text,
        ]
    )


def pane_content(cell: CellView) -> Content:
    """The whole pane: a line of figures, then each prompt with the reference's and the recent answers."""
    view = cell.completions
    if view is None:
        return literal(
            f"{cell.id}: no completions.jsonl (the trainer writes it with [train] completions > 0; "
            "a TRL script with PrefwatchCallback(..., completions=8))",
            "$text-muted",
        )
    lines = [literal(summary(view), "bold")]
    lines += [
        literal(f.message, "$text-error" if f.severity == "error" else "$text-warning")
        for f in cell.findings
        if f.kind == "length_drift"
    ]
    evaluations: list[tuple[str, Evaluation]] = [(f"step {e.step}", e) for e in view.recent]
    reference = {c.id: c for c in view.reference.completions} if view.reference is not None else {}
    ids = list(reference) or [c.id for e in view.recent for c in e.completions]
    for prompt_id in dict.fromkeys(ids):
        ref = reference.get(prompt_id)
        prompt = (
            ref.prompt
            if ref is not None
            else next((c.prompt for _, e in evaluations for c in e.completions if c.id == prompt_id), "")
        )
        lines.append(Content(""))
        lines.append(Content("").join([literal(f"{prompt_id}  ", "bold"), literal(prompt, "italic")]))
        lines.append(answer_line("reference", ref, None))
        for label, evaluation in evaluations:
            answer = next((c for c in evaluation.completions if c.id == prompt_id), None)
            lines.append(answer_line(label, answer, ref))
    if view.evaluations > len(view.recent):
        lines.append(Content(""))
        lines.append(literal(f"({view.evaluations} evaluations; the last {len(view.recent)} shown)", "dim"))
    return Content("\n").join(lines)


class CompletionsScreen(Screen[None]):
    """``w`` on a cell: what its model writes at the last evaluations, beside the reference's answers."""

    DEFAULT_CSS = """
    CompletionsScreen > #title { height: 1; padding: 0 1; background: $panel; }
    CompletionsScreen > VerticalScroll { height: 1fr; padding: 0 1; }
    """

    BINDINGS = [
        Binding("escape,backspace,w", "app.pop_screen", "Back", tooltip="back"),
    ]

    def __init__(self, cell: CellView) -> None:
        super().__init__()
        self.cell = cell

    def compose(self) -> ComposeResult:
        yield Static(self._title(), id="title")
        with VerticalScroll(id="answers", can_focus=True):
            yield Static(pane_content(self.cell), id="text")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#answers").focus()
        follow_cell(self, lambda: self.cell, self.show_cell)

    def _title(self) -> Content:
        return Content("").join(
            [literal(self.cell.id, "bold"), literal("  what the model writes (new words highlighted)")]
        )

    def show_cell(self, cell: CellView) -> None:
        """A newer view of the same cell (live): the answers are drawn again, the scroll stays."""
        self.cell = cell
        if self.is_mounted:
            self.query_one("#text", Static).update(pane_content(cell))
