"""Personal data kept out of the lake: a source's `personal_data: {drop: [...], hash: [...]}` applied to
every record as the source is read, before anything is written to bronze or to quarantine (which is
published to analysts), so the lake never holds the raw values.

- drop: the column is removed.
- hash: the value's text becomes HMAC-SHA256(CITYLAKE_PII_KEY, text) as 64 lowercase hex digits, in a
  column of the same name: equal values stay equal (a join or a count of repeat requesters still
  works), but without the key a value can be neither read back nor confirmed by guessing. Null stays
  null. Changing the key changes every hash from then on.
- A dotted name (`contact.email`) reaches into a column holding a JSON object, as nested API and JSON
  fields land (JSON text, see connectors.text_table), unless a column of that exact name exists; lists
  on the way are entered element by element. A value of such a column that is not valid JSON cannot
  be searched, so it is withheld (null).
- A record a connector could not read (a truncated line, a CSV row with the wrong field count) cannot
  be searched either: when the source declares personal data, its text is withheld from quarantine;
  the reason and the location (file:line) stay.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from orchestration.config import Source, pii_key

#: what quarantine shows instead of an unreadable record of a source with personal data
WITHHELD = "<withheld: unreadable record of a source with personal_data rules>"


class PersonalData:
    """One source's rules, with the key resolved (a missing or short key fails here, before any write)."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.drop = source.personal_data.get("drop", ())
        self.hash = source.personal_data.get("hash", ())
        self._key = pii_key(source.where) if self.hash else b""

    @property
    def active(self) -> bool:
        return bool(self.drop or self.hash)

    def digest(self, text: str) -> str:
        """HMAC-SHA256 of `text` under the source's key, hex."""
        return hmac.new(self._key, text.encode("utf-8"), hashlib.sha256).hexdigest()

    def landing(self, landing: Any) -> Any:
        """A connector's Landing with its rows and its unreadable records cleaned."""
        if not self.active:
            return landing
        return dataclasses.replace(
            landing,
            rows=self.table(landing.rows),
            rejected=[dataclasses.replace(r, record=self.record(r.record)) for r in landing.rejected],
        )

    def table(self, table: pa.Table) -> pa.Table:
        """Rows with the declared columns dropped or hashed (columns not present are left alone)."""
        for action, names in (("drop", self.drop), ("hash", self.hash)):
            for name in names:
                table = self._column(table, name, action)
        return table

    def record(self, text: str) -> str:
        """An unreadable record's text: cleaned when it is a JSON object, else withheld."""
        if not self.active:
            return text
        try:
            obj = json.loads(text)
        except (ValueError, TypeError):
            return WITHHELD
        if not isinstance(obj, dict):
            return WITHHELD
        for action, names in (("drop", self.drop), ("hash", self.hash)):
            for name in names:
                self._walk(obj, name.split("."), action)
        return json.dumps(obj, sort_keys=True, default=str)

    def stored_columns(self, names: list[str]) -> list[str]:
        """Columns an existing bronze table holds that the rules drop (loaded before the rule was added)."""
        return [n for n in self.drop if n in names]

    # ------------------------------------------------------------------------------------------ internals

    def _column(self, table: pa.Table, name: str, action: str) -> pa.Table:
        if name in table.column_names:
            i = table.column_names.index(name)
            if action == "drop":
                return table.remove_column(i)
            return table.set_column(i, name, self._hashed(table.column(name)))
        parts = name.split(".")
        # the longest leading part that is a column (a flattened export may keep dots in its names)
        for k in range(len(parts) - 1, 0, -1):
            head = ".".join(parts[:k])
            if head in table.column_names:
                i = table.column_names.index(head)
                values = [self._nested(v, parts[k:], action) for v in table.column(head).to_pylist()]
                return table.set_column(i, head, pa.array(values, pa.string()))
        return table

    def _hashed(self, column: pa.ChunkedArray) -> pa.Array:
        text = column if pa.types.is_string(column.type) else pc.cast(column, pa.string())
        return pa.array([None if v is None else self.digest(v) for v in text.to_pylist()], pa.string())

    def _nested(self, value: Any, path: list[str], action: str) -> str | None:
        if value is None:
            return None
        try:
            obj = json.loads(value) if isinstance(value, str) else value
        except ValueError:
            return None  # not JSON: it cannot be searched for the field, so it is not kept
        self._walk(obj, path, action)
        return json.dumps(obj, sort_keys=True, default=str)

    def _walk(self, obj: Any, path: list[str], action: str) -> None:
        if isinstance(obj, list):
            for item in obj:
                self._walk(item, path, action)
            return
        if not isinstance(obj, dict):
            return
        whole = ".".join(path)
        if whole in obj:
            if action == "drop":
                del obj[whole]
            elif obj[whole] is not None:
                value = obj[whole]
                obj[whole] = self.digest(value if isinstance(value, str) else json.dumps(value, sort_keys=True))
        elif len(path) > 1 and path[0] in obj:
            inner = obj[path[0]]
            if isinstance(inner, str):
                # a JSON object kept as text inside a record (a column of a rejected row)
                obj[path[0]] = self._nested(inner, path[1:], action)
            else:
                self._walk(inner, path[1:], action)
