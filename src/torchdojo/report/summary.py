"""The summary at the top of a report, made from the run's own summary.json: whatever an experiment returned,
flattened into tables, so the summary is always the run's numbers and never a second, hand-written copy.

A mapping of mappings (`rungs`: {logreg: {test_acc, ...}, ...}) becomes one table, a row per entry and a column
per number (regime x metric); a list of mappings (per-layer rows) becomes a table too; every other number is
one row of the 'numbers of the run' table, named by its path (`speed · scratch forward (s)`). Lists of plain
numbers (a curve), sentences (a verdict's reason, over 60 characters) and values nested deeper are left to the
sections and to summary.json itself.
"""

from typing import Any

from torchdojo.report.format import readable

MAX_ROWS = 40  # per table; the rest are counted in a note
MAX_DEPTH = 4


class SummaryTable:
    """One table of the summary: a caption, column names (raw keys) and rows of cells."""

    def __init__(self, caption: str, columns: list[str], rows: list[list[Any]], left_out: int = 0):
        self.caption = caption
        self.columns = columns
        self.rows = rows
        self.left_out = left_out


LONG_TEXT = 60  # characters: a sentence (a verdict's reason) is left to its section


def _scalar(v: Any) -> bool:
    """A value the summary shows: a number, a bool, None or a short text."""
    return v is None or isinstance(v, (bool, int, float)) or (isinstance(v, str) and len(v) <= LONG_TEXT)


def _table(caption: str, first: str, entries: list[tuple[str, dict[str, Any]]]) -> SummaryTable | None:
    """A table with a row per (name, mapping): the name, then the mapping's plain values (one column per key)."""
    columns = list(dict.fromkeys(k for _, d in entries for k, v in d.items() if _scalar(v)))
    if not columns:
        return None
    rows = [[name, *(d.get(c, "") if _scalar(d.get(c, "")) else "" for c in columns)] for name, d in entries]
    return SummaryTable(caption, [first, *columns], rows[:MAX_ROWS], max(0, len(rows) - MAX_ROWS))


def _label(path: list[str]) -> str:
    return " · ".join(readable(p) for p in path)


def summary_tables(summary: dict[str, Any]) -> list[SummaryTable]:
    """summary.json as tables: the regime x metric tables first, then one table of the run's other numbers."""
    tables: list[SummaryTable] = []
    numbers: list[list[Any]] = []

    def walk(path: list[str], value: Any) -> None:
        if _scalar(value):
            numbers.append([_label(path), "" if value is None else value])
        elif isinstance(value, dict) and len(path) < MAX_DEPTH:
            if value and all(isinstance(v, dict) for v in value.values()):
                t = _table(
                    _label(path), readable(path[-1]) if path else "name", [(str(k), v) for k, v in value.items()]
                )
                if t is not None:
                    tables.append(t)
                    return
            for k, v in value.items():
                walk([*path, str(k)], v)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            t = _table(_label(path), "#", [(str(i + 1), v) for i, v in enumerate(value)])
            if t is not None:
                tables.append(t)

    walk([], summary)
    if numbers:
        kept = numbers[:MAX_ROWS]
        tables.append(SummaryTable("numbers of the run", ["quantity", "value"], kept, len(numbers) - len(kept)))
    return tables
