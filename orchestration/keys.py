"""A record's key as text: one rule for Python (ingestion, quarantine) and SQL (the staging models).

A one-column key is its value's text. A composite key is its parts, each with `\\` and `|` escaped by a
backslash, joined by `|`: ('A|b', 'c') is `A\\|b|c` and ('A', 'b|c') is `A|b\\|c`, so two different
tuples never give the same text, whatever characters the values hold (a key without `|` or `\\` reads as
before: `R12|2025-01-06`).

A key's identity is its typed value, the type being bronze's column type (set by the first load): the
integer 1 and the text '1' are one key; a value that would change when cast to that type is not the same
key and is quarantined (see `integer_text_problem`); JSON numbers are numbers (101 and 101.0 are one
key, see connectors.text_table); text is compared as written ('01' and '1' are two keys).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def _escaped(part: str) -> str:
    return part.replace("\\", "\\\\").replace("|", "\\|")


def key_text(values: Sequence[Any]) -> str:
    """The text of a key given its parts' values (None as '')."""
    parts = ["" if v is None else str(v) for v in values]
    if len(parts) == 1:
        return parts[0]
    return "|".join(_escaped(p) for p in parts)


def key_sql(columns: Iterable[str], text_type: str = "varchar") -> str:
    """The same text as key_text, as a SQL expression over already quoted column names (`text_type`: the
    engine's text type). The backslash is chr(92): a backslash in a string literal escapes in Spark SQL
    and not in DuckDB, so the expression means the same on both."""
    parts = [f"coalesce(cast({c} as {text_type}), '')" for c in columns]
    if len(parts) == 1:
        return parts[0]
    return " || '|' || ".join(f"replace(replace({p}, chr(92), chr(92) || chr(92)), '|', chr(92) || '|')" for p in parts)


def integer_text_problem(text: str) -> str | None:
    """Why a text that casts to an integer cannot stand for that integer key ('01' would become 1), else None."""
    value = int(text)
    if text == str(value):
        return None
    return (
        f"key text {text!r} would become the integer {value}, the key of another record as written "
        "(a key's identity is its typed value; deliver it as the source's other rows do)"
    )
