"""One row of the `make bench` table: a figure, the floor measured in the same run, their ratio, the goal."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Row:
    name: str
    figure: float
    unit: str
    floor: float | None = None  # None: the goal is an absolute bound, not a ratio
    goal: float = math.inf  # the bound on the ratio (or on the figure when there is no floor)
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.floor is None:
            return None
        return self.figure / self.floor if self.floor > 0 else math.inf

    @property
    def met(self) -> bool:
        value = self.ratio if self.floor is not None else self.figure
        return value is not None and value <= self.goal


def format_rows(rows: list[Row]) -> str:
    header = f"| {'benchmark':52} | {'figure':>14} | {'floor':>14} | {'ratio':>6} | {'goal':>12} | met |"
    lines = [header, "|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|"]
    for row in rows:
        floor = f"{row.floor:.3g} {row.unit}" if row.floor is not None else "–"
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "–"
        goal = f"<= {row.goal:g}x" if row.floor is not None else f"<= {row.goal:g} {row.unit}"
        name = row.name + (f" ({row.note})" if row.note else "")
        lines.append(
            f"| {name:52} | {row.figure:10.3g} {row.unit:>3} | {floor:>14} | {ratio:>6} | {goal:>12} | {'yes' if row.met else 'NO':3} |"
        )
    return "\n".join(lines)
