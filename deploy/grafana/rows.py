"""The dashboard's rows, as Grafana lays them out: each row and the panels under it."""

import re
from dataclasses import dataclass
from typing import Any

Json = dict[str, Any]


@dataclass(frozen=True)
class Row:
    """A row of the dashboard and the panels under it (with queries), in layout order."""

    title: str
    panels: list[Json]

    @property
    def slug(self) -> str:
        """The title as a file name's part: "Database pool" is database-pool."""
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-") or "row"


def rows(board: Json) -> list[Row]:
    """The dashboard's rows with their panels; panels above the first row form a row named
    after the dashboard, and a collapsed row's panels (kept inside it) count too."""
    found: list[Row] = []
    current = Row(str(board.get("title", "")), [])
    for panel in board.get("panels", []):
        if panel.get("type") == "row":
            found.append(current)
            current = Row(str(panel.get("title", "")), list(panel.get("panels") or []))
        else:
            current.panels.append(panel)
    found.append(current)
    return [
        Row(row.title, [panel for panel in row.panels if panel.get("targets")])
        for row in found
        if row.panels
    ]
