"""A cell's settings: cell.json read as the launcher wrote it (prefwatch.files.settings.CellSettings).

The launcher writes fully resolved cells; a hand-written one may leave keys out and gets what a grid file
that sets nothing gives. This module imports only the standard library and prefwatch.files (msgspec): the
entry point reads the cell before importing torch, so that thread settings take effect.
"""

from __future__ import annotations

from pathlib import Path

from msgspec.structs import replace

from prefwatch.files import rundir
from prefwatch.files.settings import OBJECTIVES, CellSettings


class CellError(ValueError):
    """cell.json cannot be used; the message is one line that names the file and the key."""


def load_cell(path: str | Path) -> CellSettings:
    """Read cell.json; the cell directory is the file's folder."""
    path = Path(path)
    try:
        settings = rundir.read_cell_file(path).settings
    except rundir.RecordError as e:
        raise CellError(str(e)) from None
    return resolve_cell(settings, path)


def resolve_cell(cell: CellSettings, path: Path) -> CellSettings:
    """The cell as the trainer runs it: named after its folder when it has no id, with an objective it
    knows, a rank and a seed."""
    if cell.objective not in OBJECTIVES:
        raise CellError(f"{path}: objective {cell.objective!r} is not one of {', '.join(OBJECTIVES)}")
    unset = next((key for key, value in (("rank", cell.rank), ("seed", cell.seed)) if value is None), None)
    if unset:
        raise CellError(f"{path}: {unset}: must be an integer, got null")
    return replace(cell, id=cell.id or path.parent.name)
