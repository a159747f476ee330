"""What a path holds: a run directory, one run, a folder of runs, or a tracker's store, turned into cells.

``open_path`` is the one entry: it recognises what the path holds (a tracker's store first, then
prefwatch's run directory, then a run in one of the formats of ``prefwatch.ingest.formats``), searches a folder
of runs a few levels down, and says what it skipped and why. Nothing is read yet: call ``poll()``.
"""

from __future__ import annotations

import os
import re
import stat
from collections import Counter
from dataclasses import replace
from pathlib import Path

from prefwatch.core.clock import SYSTEM, Clock
from prefwatch.core.factors import SEED, Factors
from prefwatch.core.objectives import PREFERENCE, TOKENS
from prefwatch.files import rundir
from prefwatch.ingest.factors import cell_record_factors, folder_factors
from prefwatch.ingest.formats import format_of
from prefwatch.ingest.readers.jsonl import MetricsLog
from prefwatch.ingest.readers.protocol import Reader
from prefwatch.ingest.sources import CellSource, GridSource, SourceError, guess_labels, natural_key

# How deep a folder of runs is searched for cells (runs/x/adapters/dpo/ is three levels down).
SEARCH_DEPTH = 3


# Files that look like logs but are not a format prefwatch reads, with what to point it at instead.
UNREAD_LOGS = {
    "trainer_log.jsonl": "LLaMA-Factory's progress log (loss and accuracy only); prefwatch reads the "
    "run's trainer_state.json, which LLaMA-Factory writes beside it",
}


# A folder of runs names, among the folders it skips, those holding console logs (a Trainer's
# printed records): a run logged only to the console is a run the user expects to see.
CONSOLE_LOG = "*.log"


CONSOLE_LOG_WHY = (
    "a console log (printed records, not a log prefwatch reads); point prefwatch at the run's "
    "trainer_state.json, metrics.jsonl or TensorBoard events"
)


Labels = dict[str, tuple[str | None, int | None]]


def open_path(path: Path | str, labels: Labels | None = None, wait: bool = False, clock: Clock = SYSTEM) -> GridSource:
    """Recognise what a path holds and build its cells (nothing is read yet: call poll()).

    ``labels`` gives cells their objective and LoRA rank by cell name (the folder's name) where
    neither the name nor adapter_config.json says; a part given as None is left as found. ``wait``:
    a tracker's store with no run yet is a grid of no cells that finds them as they start (attach).
    ``clock`` times what the readers wait for (tests pass a clock they move).
    """
    grid = _open(Path(path), wait, clock)
    _apply_labels(grid, labels or {})
    return grid


def _open(path: Path, wait: bool, clock: Clock) -> GridSource:
    try:
        return _recognise(path, wait, clock)
    except PermissionError as exc:  # a folder of another user's: one line, not a traceback
        where = exc.filename or path
        raise SourceError(f"{where}: cannot be read ({exc.strerror})") from None


def _recognise(path: Path, wait: bool, clock: Clock) -> GridSource:
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    if wait and path.is_dir():
        try:
            return _open(path, False, clock)
        except SourceError as exc:  # nothing to read yet: a grid of no cells that looks again
            name = path.resolve().name or str(path)
            return GridSource(name, path, [], finder=Pending(path, str(exc), clock), clock=clock)

    from prefwatch.ingest.trackers import open_store  # lazy: SQLite, the W&B protobufs

    store = open_store(path, wait, clock)
    if store is not None:
        return store
    if path.is_file():
        named = format_of(path)  # trainer_state.json, an event file: the run is the folder
        if named is not None:
            cell = _run_cell(path.parent, named.open(path, clock), clock)
            return GridSource(path.parent.name, path.parent, [cell], clock=clock)
        if path.name in UNREAD_LOGS:
            raise SourceError(f"{path}: not read: {UNREAD_LOGS[path.name]}")
        cell = _run_cell(path.parent, MetricsLog.open(path, clock), clock)
        return GridSource(path.stem, path.parent, [cell], clock=clock)
    if rundir.is_grid_dir(path):
        cells = [_prefwatch_cell(d, clock) for d in rundir.cell_dirs(path)]
        return GridSource(path.name, path, cells, managed=True, clock=clock)
    single = _cell_at(path, clock)
    if single is not None:
        return GridSource(path.name, path.parent, [single], clock=clock)
    cells, skipped = find_cells(path, clock=clock)
    if not cells:
        if skipped:
            raise SourceError(f"{path}: no logs prefwatch reads ({'; '.join(skipped_lines(skipped, 3))})")
        raise SourceError(
            f"{path}: no logs found within {SEARCH_DEPTH} folder levels (looked for a run directory, "
            "metrics.jsonl, trainer_state.json and TensorBoard event files)"
        )
    for cell in cells:  # cells found further down are named by their path from here
        if cell.directory.parent != path:
            cell.id = cell.directory.relative_to(path).as_posix()
    cells.sort(key=lambda c: [natural_key(Path(part)) for part in c.directory.relative_to(path).parts])
    return GridSource(path.resolve().name or str(path), path, cells, skipped=skipped, clock=clock)


class Pending:
    """A folder with no logs yet, looked at again at each refresh until it holds some (``attach`` on
    the folder a grid or a tracker will write into). Once it does, the grid takes the cells found and
    whatever finds the later ones (a tracker's store grows)."""

    def __init__(self, path: Path, why: str, clock: Clock) -> None:
        self.path = path
        self.clock = clock
        self.waiting = f"waiting for logs: {why}"

    def watched(self) -> list[Path]:
        return [self.path]

    def refresh(self, grid: GridSource) -> bool:
        try:
            found = _open(self.path, True, self.clock)
        except SourceError:
            return False
        if found.finder is not None and not found.cells:
            self.waiting = str(found.waiting)
            grid.finder = found.finder if not isinstance(found.finder, Pending) else self
            return False
        grid.name, grid.root, grid.managed, grid.finder = found.name, found.root, found.managed, found.finder
        grid.cells.extend(found.cells)
        return True


def find_cells(
    root: Path, depth: int = SEARCH_DEPTH, clock: Clock = SYSTEM
) -> tuple[list[CellSource], list[tuple[Path, str]]]:
    """The runs in a folder and in its subfolders down to ``depth`` levels (a run's own folder is not
    searched further), and the folders holding log-like files prefwatch does not read, with why."""
    cells: list[CellSource] = []
    skipped: list[tuple[Path, str]] = []
    level = [root]
    for _ in range(depth):
        below: list[Path] = []
        for folder in level:
            for child in _subfolders(folder):
                try:
                    os.scandir(child).close()  # a folder this user cannot list: said why, not raised
                    cell = _cell_at(child, clock)
                    unread = None if cell is not None else _unread(child)
                except OSError as exc:
                    skipped.append((child.relative_to(root), exc.strerror or str(exc)))
                    continue
                if cell is not None:
                    cells.append(cell)
                    continue
                if unread is not None:
                    skipped.append((child.relative_to(root), f"{unread[0]} is {unread[1]}"))
                below.append(child)
        level = below
    unread = _unread(root)
    if unread is not None:
        skipped.insert(0, (Path(unread[0]), unread[1]))
    return cells, skipped


def skipped_lines(skipped: list[tuple[Path, str]], most: int = 10) -> list[str]:
    """The folders not read, one line each, at most ``most`` of them and then one line for the rest
    (``report /proc`` meets thousands: the rest are counted by reason)."""
    lines = [f"{where}: {why}" for where, why in skipped[:most]]
    rest = Counter(why.split(" (")[0].split(";")[0] for _, why in skipped[most:])  # the reason, without its advice
    if rest:
        reasons = ", ".join(f"{n} {why}" for why, n in rest.most_common(3)) + (", ..." if len(rest) > 3 else "")
        lines.append(f"{sum(rest.values())} more folders ({reasons})")
    return lines


def _unread(folder: Path) -> tuple[str, str] | None:
    """(file, why) for a folder that is not a run but holds a file that looks like a log, or None."""
    for name, why in UNREAD_LOGS.items():
        if (folder / name).is_file():
            return name, why
    console = sorted(p.name for p in folder.glob(CONSOLE_LOG) if p.is_file())
    return (console[0], CONSOLE_LOG_WHY) if console else None


def _subfolders(folder: Path) -> list[Path]:
    """Subfolders worth searching: not hidden, not a checkpoint (read with its run), not a link loop."""
    try:
        children = sorted(folder.iterdir(), key=natural_key)  # r4, r8, r16: numbers as numbers
    except OSError:
        return []
    return [
        c
        for c in children
        if not c.name.startswith(".") and not re.match(r"checkpoint-\d+$", c.name) and _plain_folder(c)
    ]


def _plain_folder(path: Path) -> bool:
    """A folder, not a link to one (a link loop, /proc's links to other users' folders)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _apply_labels(grid: GridSource, labels: Labels) -> None:
    unknown = [name for name in labels if not any(name in (c.id, str(c.directory)) for c in grid.cells)]
    if unknown:
        names = ", ".join(c.id for c in grid.cells)
        raise SourceError(f"label for {', '.join(unknown)}: no such cell (cells: {names})")
    for cell in grid.cells:
        label = labels.get(cell.id) or labels.get(str(cell.directory))
        if label is not None:
            cell.relabel(*label, source="--label")


def parse_label(text: str) -> tuple[str, tuple[str | None, int | None]]:
    """Parse ``NAME=OBJECTIVE:RANK`` (``NAME=OBJECTIVE`` and ``NAME=:RANK`` too) for open_path's labels.

    >>> parse_label("run-a=dpo:16")
    ('run-a', ('dpo', 16))
    """
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise SourceError(f"label {text!r}: expected NAME=OBJECTIVE:RANK, e.g. run-a=dpo:16")
    objective_text, _, rank_text = value.strip().partition(":")
    objective = None
    if objective_text.strip():
        objective = TOKENS.get(objective_text.strip().lower())
        if objective not in PREFERENCE:
            objective = None
            known = ", ".join(sorted(t for t, o in TOKENS.items() if o in PREFERENCE))
            raise SourceError(f"label {text!r}: unknown objective {objective_text.strip()!r} (one of {known})")
    rank = None
    if rank_text.strip():
        if not rank_text.strip().isdigit() or int(rank_text) <= 0:
            raise SourceError(f"label {text!r}: the rank must be a positive whole number, not {rank_text.strip()!r}")
        rank = int(rank_text)
    if objective is None and rank is None:
        raise SourceError(f"label {text!r}: give an objective, a rank or both, e.g. run-a=dpo:16")
    return name, (objective, rank)


def _cell_at(path: Path, clock: Clock) -> CellSource | None:
    if (path / rundir.CELL_FILE).is_file():
        return _prefwatch_cell(path, clock)
    found = format_of(path)
    return _run_cell(path, found.open(path, clock), clock) if found is not None else None


def _prefwatch_cell(path: Path, clock: Clock) -> CellSource:
    try:
        cell, problem = rundir.read_cell(path), None
    except rundir.RecordError as exc:  # shown as the cell's read error; the logs are still read
        cell, problem = rundir.CellRecord(), str(exc)
    factors, problems = cell_record_factors(cell), list[str]()
    factors.update(folder_factors(path, problems=problems))
    claim = guess_labels(path, factors)
    objective = cell.says("objective")
    if objective is not None:
        claim = replace(claim, objective=objective, objective_source="cell.json", note=None)
    return CellSource(
        id=path.name,
        directory=path,
        reader=MetricsLog.open(path, clock),
        objective=claim.objective,
        rank=claim.rank,
        seed=_seed(factors),
        planned_steps=cell.says("train.max_steps"),
        claim=claim,
        managed=rundir.is_launched_cell(path),
        record_error=problem,
        factors=factors,
        factor_problems=problems,
        clock=clock,
    )


def _run_cell(path: Path, reader: Reader, clock: Clock) -> CellSource:
    """A run prefwatch did not launch: its factors from the files in and beside its folder and its name."""
    problems: list[str] = []
    factors = folder_factors(path, problems=problems)
    claim = guess_labels(path, factors)
    return CellSource(
        path.name,
        path,
        reader,
        claim.objective,
        claim.rank,
        _seed(factors),
        claim=claim,
        factors=factors,
        factor_problems=problems,
        clock=clock,
    )


def _seed(factors: Factors) -> int | None:
    seed = factors.get(SEED)
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None
