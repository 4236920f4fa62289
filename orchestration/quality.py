"""Great Expectations suites (expectations/*.json) run over a table, a chunk at a time.

GX 1.x on DuckDB through SQLAlchemy hits an upstream bug, so citylake streams the table out of
DuckDB or Delta as Arrow record batches and validates each batch as a pandas DataFrame: memory stays
bounded by the chunk size whatever the table's size, and results are summed over the chunks.

How expectations combine over chunks:
- column-map expectations (not null, between, in set, regex, ...) sum their unexpected rows; success
  honours `mostly` over the whole table;
- `expect_table_row_count_to_be_between` is judged on the table's total rows;
- `expect_column_min_to_be_between` / `expect_column_max_to_be_between` on the min / max over all chunks;
- other expectations (uniqueness, column sets) must hold in every chunk (uniqueness is therefore
  exact for tables up to one chunk; dbt's unique tests cover whole tables).

A suite file is named after the asset key it guards, dots for slashes:
expectations/marts.indicators.json guards marts/indicators. A kwarg value written "$name" is filled
in at run time: `$district_codes`, `$area_ids` (district codes plus CITY), `$min_rows` (volume: the
previous validated row count less the allowed drop).
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

if TYPE_CHECKING:
    from orchestration.config import Source

EXPECTATIONS_DIR = Path(__file__).resolve().parent.parent / "expectations"
CHUNK_ROWS = 500_000
SAMPLE_ROWS = 5
#: derived column holding each row's age in hours, for freshness expectations
AGE_COLUMN = "_age_hours"
_TOTAL_ROWS = "expect_table_row_count_to_be_between"
GUARDED_LAYERS = ("intermediate", "conformed", "marts")
_EXTREMES = {"expect_column_min_to_be_between": min, "expect_column_max_to_be_between": max}


def suite_path(asset_key: Iterable[str]) -> Path:
    return EXPECTATIONS_DIR / (".".join(asset_key) + ".json")


@dataclass
class ExpectationOutcome:
    """One expectation summed over all chunks."""

    type: str
    kwargs: dict[str, Any]
    success: bool = True
    element_count: int = 0
    unexpected_count: int = 0
    observed_value: Any = None
    sample: list[dict] = field(default_factory=list)
    is_map: bool = False

    def describe(self) -> str:
        target = self.kwargs.get("column") or self.kwargs.get("column_list") or self.kwargs.get("column_set") or ""
        if self.is_map:
            share = self.unexpected_count / self.element_count if self.element_count else 0
            return (
                f"{self.type}({target}): {self.unexpected_count} of {self.element_count} rows unexpected "
                f"({share:.1%}; mostly={self.kwargs.get('mostly', 1)})"
            )
        return f"{self.type}({target}): observed {self.observed_value}"


@dataclass
class SuiteOutcome:
    suite: str
    rows: int
    expectations: list[ExpectationOutcome]
    #: GX's own validation result (counts summed over chunks), for Data Docs
    gx_result: Any = None

    @property
    def success(self) -> bool:
        return all(e.success for e in self.expectations)

    @property
    def failed(self) -> list[ExpectationOutcome]:
        return [e for e in self.expectations if not e.success]


def load_suite(path: Path, substitutions: dict[str, Any]) -> dict:
    """The suite JSON with `$name` placeholders replaced."""
    suite = json.loads(path.read_text(encoding="utf-8"))
    return fill(suite, substitutions, str(path))


def fill(suite: dict, substitutions: dict[str, Any], where: str) -> dict:
    suite = copy.deepcopy(suite)

    def sub(value: Any) -> Any:
        if isinstance(value, str) and value.startswith("$"):
            if value[1:] not in substitutions:
                raise ValueError(
                    f"{where}: unknown placeholder {value}; use one of {', '.join('$' + k for k in substitutions)}"
                )
            return substitutions[value[1:]]
        return value

    for exp in suite.get("expectations", []):
        exp["kwargs"] = {k: sub(v) for k, v in exp.get("kwargs", {}).items()}
    return suite


@functools.cache
def _batch_definition():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx

    for name in ("great_expectations", "great_expectations.data_context.types.base"):
        logging.getLogger(name).setLevel(logging.WARNING)
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = {"globally": False, "metric_calculations": False}
    asset = ctx.data_sources.add_pandas("citylake").add_dataframe_asset("chunk")
    return asset.add_batch_definition_whole_dataframe("whole")


def _target(exp_type: str, kwargs: dict) -> tuple:
    cols = kwargs.get("column") or kwargs.get("column_list") or kwargs.get("column_set") or ""
    return exp_type, json.dumps(cols, default=str)


def _validate_df(suite: dict, df: pd.DataFrame) -> tuple[Any, list]:
    """GX's validation result and its per-expectation results in the suite's order (GX reorders them)."""
    import great_expectations as gx

    gx_suite = gx.ExpectationSuite(name=suite["name"], expectations=suite["expectations"])
    result = (
        _batch_definition()
        .get_batch(batch_parameters={"dataframe": df})
        .validate(gx_suite, result_format={"result_format": "COMPLETE"})
    )
    pool: dict[tuple, list] = {}
    for r in result.results:
        pool.setdefault(_target(r.expectation_config.type, r.expectation_config.kwargs), []).append(r)
    ordered = [pool[_target(e["type"], e.get("kwargs", {}))].pop(0) for e in suite["expectations"]]
    result.results = ordered
    return result, ordered


def validate_batches(suite: dict, batches: Iterator[pa.RecordBatch], schema: pa.Schema | None = None) -> SuiteOutcome:
    """Validate every Arrow batch against the suite and combine the results (see the module doc)."""
    per_chunk = [e for e in suite["expectations"] if e["type"] != _TOTAL_ROWS]
    chunk_suite = {"name": suite["name"], "expectations": per_chunk}
    outcomes = [ExpectationOutcome(e["type"], e.get("kwargs", {})) for e in per_chunk]
    rows = 0
    first = None
    for batch in _non_empty(batches, schema):
        df = batch.to_pandas()
        df.index = pd.RangeIndex(rows, rows + len(df))
        rows += len(df)
        result, ordered = _validate_df(chunk_suite, df) if per_chunk else (None, [])
        first = first or result
        for outcome, r in zip(outcomes, ordered, strict=True):
            _combine(outcome, r, df)
    for outcome in outcomes:
        if outcome.is_map:
            mostly = float(outcome.kwargs.get("mostly", 1.0))
            allowed = (1 - mostly) * outcome.element_count
            outcome.success = outcome.success and outcome.unexpected_count <= allowed + 1e-9
    for exp in suite["expectations"]:
        if exp["type"] == _TOTAL_ROWS:
            lo, hi = exp["kwargs"].get("min_value"), exp["kwargs"].get("max_value")
            ok = (lo is None or rows >= lo) and (hi is None or rows <= hi)
            outcomes.append(ExpectationOutcome(_TOTAL_ROWS, exp["kwargs"], success=ok, observed_value=rows))
    if first is not None:
        _patch_result(first, [o for o in outcomes if o.type != _TOTAL_ROWS])
    return SuiteOutcome(suite=suite["name"], rows=rows, expectations=outcomes, gx_result=first)


def _non_empty(batches: Iterator[pa.RecordBatch], schema: pa.Schema | None) -> Iterator[pa.RecordBatch]:
    """The batches; an empty table still yields one empty batch so column expectations are judged."""
    seen = False
    for batch in batches:
        if batch.num_rows or not seen:
            seen = True
            yield batch
    if not seen and schema is not None:
        yield pa.RecordBatch.from_pylist([], schema=schema)


def _combine(outcome: ExpectationOutcome, r: Any, df: pd.DataFrame) -> None:
    res = r.result or {}
    if r.exception_info and r.exception_info.get("raised_exception"):
        outcome.success = False
        outcome.observed_value = r.exception_info.get("exception_message")
        return
    if "unexpected_count" in res and res.get("element_count") is not None:
        outcome.is_map = True
        outcome.element_count += int(res.get("element_count") or 0)
        outcome.unexpected_count += int(res.get("unexpected_count") or 0)
        need = SAMPLE_ROWS - len(outcome.sample)
        idx = [i for i in (res.get("unexpected_index_list") or []) if i in df.index][:need]
        if idx:
            outcome.sample.extend(json.loads(df.loc[idx].to_json(orient="records", date_format="iso")))
        return
    observed = res.get("observed_value")
    combine = _EXTREMES.get(outcome.type)
    if combine and observed is not None:
        outcome.observed_value = (
            observed if outcome.observed_value is None else combine(outcome.observed_value, observed)
        )
        lo, hi = outcome.kwargs.get("min_value"), outcome.kwargs.get("max_value")
        v = outcome.observed_value
        outcome.success = (lo is None or v >= lo) and (hi is None or v <= hi)
        return
    outcome.success = outcome.success and bool(r.success)
    if observed is not None:
        outcome.observed_value = observed


def _patch_result(result: Any, outcomes: list[ExpectationOutcome]) -> None:
    """Put the whole-table figures into the first chunk's GX result (what Data Docs renders)."""
    for r, o in zip(result.results, outcomes, strict=True):
        r.success = o.success
        if o.is_map and r.result is not None:
            r.result["element_count"] = o.element_count
            r.result["unexpected_count"] = o.unexpected_count
            pct = 100.0 * o.unexpected_count / o.element_count if o.element_count else 0.0
            r.result["unexpected_percent"] = pct
            r.result["unexpected_percent_total"] = pct
            r.result["unexpected_percent_nonmissing"] = pct
            for key in ("unexpected_index_list", "unexpected_index_query", "unexpected_list"):
                r.result.pop(key, None)
        elif r.result is not None and o.observed_value is not None:
            r.result["observed_value"] = o.observed_value
    result.success = all(o.success for o in outcomes)


def data_docs(outcome: SuiteOutcome, path: Path) -> Path | None:
    """GX Data Docs (HTML) of one validation run; None when nothing was validated by GX."""
    if outcome.gx_result is None:
        return None
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    from orchestration.docs_site import offline_data_docs

    html = DefaultJinjaPageView().render(ValidationResultsPageRenderer().render(outcome.gx_result))
    path.parent.mkdir(parents=True, exist_ok=True)
    # readable with no network; Home goes to the Data Docs index beside the page's folder
    path.write_text(offline_data_docs(html, "../index.html"), encoding="utf-8")
    return path


def split_rows(suite: dict, table: pa.Table) -> tuple[pa.Table, list[tuple[int, str]]]:
    """Row-level gate at bronze: the rows every column-map expectation accepts, and (row, reason) for
    the others, the reason naming the expectation that failed. Table-level expectations are left to the
    asset check."""
    row_level = [
        e
        for e in suite.get("expectations", [])
        if e["type"].startswith("expect_column_values_") and e.get("kwargs", {}).get("column") in table.column_names
    ]
    if not row_level or table.num_rows == 0:
        return table, []
    whole = table
    reasons: dict[int, str] = {}
    # only the columns the expectations look at are converted (a wide text table costs much as pandas objects)
    table = table.select(list(dict.fromkeys(e["kwargs"]["column"] for e in row_level)))
    for start in range(0, table.num_rows, CHUNK_ROWS):
        df = table.slice(start, CHUNK_ROWS).to_pandas()
        df.index = pd.RangeIndex(start, start + len(df))
        strict = [{**e, "kwargs": {k: v for k, v in e["kwargs"].items() if k != "mostly"}} for e in row_level]
        _, ordered = _validate_df({"name": suite["name"], "expectations": strict}, df)
        for exp, r in zip(strict, ordered, strict=True):
            for i in (r.result or {}).get("unexpected_index_list") or []:
                reasons.setdefault(int(i), f"failed {exp['type']}({exp['kwargs'].get('column')})")
    if not reasons:
        return whole, []
    keep = np.ones(table.num_rows, bool)
    keep[list(reasons)] = False
    return whole.filter(keep), sorted(reasons.items())


def city_suite_path(source: Source) -> Path:
    """A source's own bronze suite: `expectations/bronze.<agency>.<source>.json` in the city's folder (the
    folder of its city.yaml), never the shared expectations/, which holds only suites true for any city."""
    return source.base_dir / "expectations" / f"bronze.{source.agency}.{source.name}.json"


def bronze_suite(source: Source) -> dict:
    """The bronze suite of a source: the city's own file, or one from its primary key; plus freshness
    from city.yaml."""
    path = city_suite_path(source)
    if path.exists():
        suite = json.loads(path.read_text(encoding="utf-8"))
    else:
        exps = [{"type": "expect_column_to_exist", "kwargs": {"column": c}} for c in source.primary_key]
        suite = {"name": f"bronze.{source.agency}.{source.name}", "expectations": exps}
    # a key column that is mostly empty means the source broke, whatever its suite says
    listed = {e["kwargs"].get("column") for e in suite["expectations"] if e["type"].endswith("not_be_null")}
    suite["expectations"] += [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": c, "mostly": 0.99}}
        for c in source.primary_key
        if c not in listed
    ]
    fresh = source.get("freshness")
    if fresh:
        suite["expectations"].append(
            {
                "type": "expect_column_min_to_be_between",
                "kwargs": {"column": AGE_COLUMN, "max_value": float(fresh["max_delay_hours"])},
            }
        )
    return suite


def guarded_models() -> list[tuple[str, str]]:
    """(layer, model) for every suite file of a dbt layer: the models whose gates publication waits for."""
    found = []
    for path in sorted(EXPECTATIONS_DIR.glob("*.json")):
        parts = path.stem.split(".")
        if len(parts) == 2 and parts[0] in GUARDED_LAYERS:
            found.append((parts[0], parts[1]))
    return found


def duckdb_batches(database: Path, table: str, chunk_rows: int = CHUNK_ROWS) -> Iterator[pa.RecordBatch]:
    """A table of a DuckDB file as Arrow batches (read-only connection, closed at the end)."""
    import duckdb

    con = duckdb.connect(str(database), read_only=True)
    try:
        yield from con.sql(f"select * from {table}").to_arrow_reader(chunk_rows)
    finally:
        con.close()


def delta_batches(uri: str, chunk_rows: int = CHUNK_ROWS, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """A Delta table as Arrow batches, one at a time (no read-ahead: memory stays one chunk), with only
    `columns` when given (those the table has)."""
    from orchestration.lake import open_table

    dt = open_table(uri)
    if dt is None:
        return
    dataset = dt.to_pyarrow_dataset()
    if columns is not None:
        columns = [c for c in dict.fromkeys(columns) if c in dataset.schema.names]
    yield from dataset.to_batches(columns=columns, batch_size=chunk_rows, batch_readahead=0, fragment_readahead=0)


#: expectation kwargs that name the columns an expectation reads
_COLUMN_KWARGS = ("column", "column_A", "column_B", "column_list", "column_set")


def suite_columns(suite: dict) -> list[str] | None:
    """The columns a suite's expectations read, or None when one may read any column (then read them all)."""
    columns: list[str] = []
    for exp in suite.get("expectations", []):
        kind = exp["type"]
        if not (kind.startswith("expect_column_") or kind == _TOTAL_ROWS):
            return None
        for key in _COLUMN_KWARGS:
            value = exp.get("kwargs", {}).get(key)
            columns += [value] if isinstance(value, str) else list(value or [])
    return columns


def with_age(batches: Iterator[pa.RecordBatch], column: str, now: pd.Timestamp) -> Iterator[pa.RecordBatch]:
    """Add `_age_hours` (now minus the row's `column`, parsed as a UTC timestamp) for freshness."""
    for batch in batches:
        values = batch.column(column).to_pandas() if column in batch.schema.names else pd.Series([None] * len(batch))
        ts = pd.to_datetime(values, utc=True, errors="coerce", format="mixed")
        age = (now - ts).dt.total_seconds() / 3600.0
        yield batch.append_column(AGE_COLUMN, pa.array(age.to_numpy(), pa.float64()))


@dataclass
class VolumeState:
    """The last validated row count of a guarded table (volume expectations compare against it)."""

    path: Path

    def previous(self) -> int | None:
        if not self.path.exists():
            return None
        return int(json.loads(self.path.read_text())["rows"])

    def record(self, rows: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"rows": rows}))
        os.replace(tmp, self.path)


def min_rows(previous: int | None, max_drop: float) -> int:
    """Volume floor: the previous count less the allowed drop (0 when there is no previous count)."""
    return 0 if previous is None else int(previous * (1 - max_drop))
