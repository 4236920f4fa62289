"""Great Expectations suites (expectations/*.json) executed over what changed, in DuckDB.

GX is the definition of every expectation (the suite files are GX expectation configurations) and
renders the Data Docs; where running them through GX's pandas engine was the cost (whole tables
streamed through pandas on every run), the same expectations are compiled to SQL and executed by
DuckDB (`validate_relation`): one aggregate query per suite (plus one GROUP BY per uniqueness
expectation), with GX's own counting rules: a column-map expectation counts the rows GX counts as
unexpected among those it does not count as missing (null, or NaN in a float column), and `mostly`
is judged on the non-missing rows, as GX does. tests/test_gates_duckdb.py proves both engines give
the same verdicts and counts on every suite of the reference city. An expectation type not compiled
here sends its suite through GX's pandas engine (`validate_batches`), a chunk at a time:
- column-map expectations sum their counts over chunks and are judged on the sums;
- `expect_column_min_to_be_between` / `expect_column_max_to_be_between` on the min / max over all chunks;
- other expectations must hold in every chunk (uniqueness is exact within a chunk there).

What is validated (see docs/quality.md, "What each gate reads"):
- a bronze suite, the rows the last load wrote (`_batch` = its run id; a rerun's unchanged rows are not
  rewritten, so they are not judged again), its column expectations on the table's columns, freshness
  on the table's newest row (`validate_load`);
- a daily model's suite, the days its last build replaced; any other model's, the whole table
  (`validate_model`);
- `expect_table_row_count_to_be_between` (the volume rule) on the whole table's rows, from the Delta
  log or DuckDB's count, whatever slice the other expectations read.

A suite file is named after the asset key it guards, dots for slashes:
expectations/marts.indicators.json guards marts/indicators. A kwarg value written "$name" is filled
in at run time: `$district_codes`, `$area_ids` (district codes plus CITY), `$min_rows` (volume: the
previous validated row count less the allowed drop).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

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

#: expectation kwargs that name the columns an expectation reads
_COLUMN_KWARGS = ("column", "column_A", "column_B", "column_list", "column_set")


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
    #: rows GX leaves out of a column-map expectation (null / NaN values; none for (not_)be_null)
    missing_count: int = 0
    observed_value: Any = None
    sample: list[dict] = field(default_factory=list)
    is_map: bool = False

    def judge(self) -> None:
        """GX's own rule for a column-map expectation: the share of the rows it considers (all but the
        missing ones) that are expected must reach `mostly`; vacuously true when it considers none."""
        considered = self.element_count - self.missing_count
        mostly = float(self.kwargs.get("mostly", 1.0))
        self.success = self.success and (considered <= 0 or (considered - self.unexpected_count) / considered >= mostly)

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
    #: rows validated (the slice: a run's load, a partition window, or the whole table)
    rows: int
    expectations: list[ExpectationOutcome]
    #: GX's own validation result (counts summed over chunks), for Data Docs; built from `expectations`
    #: when None
    gx_result: Any = None
    #: the whole table's rows (what the volume rule is judged on)
    table_rows: int | None = None
    #: which rows were validated, for Data Docs (e.g. "rows loaded by run <id>")
    scope: str = ""

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


def validate_batches(
    suite: dict, batches: Iterator[pa.RecordBatch], schema: pa.Schema | None = None, table_rows: int | None = None
) -> SuiteOutcome:
    """Validate every Arrow batch against the suite with GX's pandas engine and combine the results (see
    the module doc). `table_rows`: the whole table's row count when the batches are a slice of it (the
    volume rule is judged on it)."""
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
            outcome.judge()
    outcome = _with_row_counts(suite, outcomes, rows, table_rows)
    if first is not None:
        _patch_result(first, outcomes[: len(per_chunk)])
        outcome.gx_result = first
    return outcome


def _with_row_counts(
    suite: dict, outcomes: list[ExpectationOutcome], rows: int, table_rows: int | None
) -> SuiteOutcome:
    """The suite's outcome: row-count expectations judged on the table's rows (the slice's when not given)."""
    total = rows if table_rows is None else table_rows
    for exp in suite["expectations"]:
        if exp["type"] == _TOTAL_ROWS:
            ok = _in_bounds(total, exp["kwargs"])
            outcomes.append(ExpectationOutcome(_TOTAL_ROWS, exp["kwargs"], success=ok, observed_value=total))
    return SuiteOutcome(suite=suite["name"], rows=rows, expectations=outcomes, table_rows=total)


def _in_bounds(value: Any, kwargs: dict) -> bool:
    lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
    if value is None:
        return False
    above = lo is None or (value > lo if kwargs.get("strict_min") else value >= lo)
    return above and (hi is None or (value < hi if kwargs.get("strict_max") else value <= hi))


#: expectations GX judges from the columns alone: in DuckDB they are judged on the relation's column names
_SCHEMA_ONLY = {
    "expect_column_to_exist",
    "expect_table_columns_to_match_ordered_list",
    "expect_table_columns_to_match_set",
    "expect_table_column_count_to_equal",
}
_UNIQUE = {"expect_column_values_to_be_unique", "expect_compound_columns_to_be_unique"}
#: column-map expectations compiled to SQL: the condition of an unexpected value (of a non-missing one)
_MAP_SQL = {
    "expect_column_values_to_not_be_null",
    "expect_column_values_to_be_null",
    "expect_column_values_to_be_between",
    "expect_column_values_to_be_in_set",
    "expect_column_values_to_not_be_in_set",
    "expect_column_values_to_match_regex",
    "expect_column_values_to_not_match_regex",
}
DUCKDB_EXPECTATIONS = _SCHEMA_ONLY | _UNIQUE | _MAP_SQL | set(_EXTREMES) | {_TOTAL_ROWS}
_FLOATS = ("DOUBLE", "FLOAT", "REAL")


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _missing(columns: list[str], types: dict[str, str], how: str = "any") -> str:
    """SQL true for a row GX counts as missing: null, or NaN in a float column (pandas treats both as null)."""
    parts = [
        f"({quote(c)} is null or isnan({quote(c)}))" if types.get(c, "").upper() in _FLOATS else f"{quote(c)} is null"
        for c in columns
    ]
    return "(" + (" and " if how == "all" else " or ").join(parts or ["false"]) + ")"


def _bounds_sql(column: str, kwargs: dict, params: list) -> str:
    parts = []
    for key, strict, op in (("min_value", "strict_min", ">"), ("max_value", "strict_max", "<")):
        if kwargs.get(key) is not None:
            parts.append(f"{quote(column)} {op}{'' if kwargs.get(strict) else '='} ?")
            params.append(kwargs[key])
    return " and ".join(parts) or "true"


def _map_sql(exp: dict, types: dict[str, str], params: list) -> tuple[str | None, str]:
    """(missing rows, unexpected rows among the others) of a column-map expectation, as SQL conditions."""
    kind, kw = exp["type"], exp.get("kwargs", {})
    col = kw["column"]
    missing = _missing([col], types)
    if kind == "expect_column_values_to_not_be_null":
        return None, missing
    if kind == "expect_column_values_to_be_null":
        return None, f"not {missing}"
    if kind == "expect_column_values_to_be_between":
        return missing, f"not ({_bounds_sql(col, kw, params)})"
    if kind in ("expect_column_values_to_be_in_set", "expect_column_values_to_not_be_in_set"):
        values = list(kw.get("value_set") or [])
        params.extend(values)
        found = f"{quote(col)} in ({', '.join('?' * len(values))})" if values else "false"
        return missing, (f"not ({found})" if kind.endswith("to_be_in_set") and "_not_" not in kind else found)
    # regex: GX's pandas engine searches the value's text (re.search); DuckDB's regexp_matches searches too
    params.append(kw["regex"])
    found = f"regexp_matches(cast({quote(col)} as varchar), ?)"
    return missing, (f"not {found}" if kind == "expect_column_values_to_match_regex" else found)


def _unique_columns(exp: dict) -> tuple[list[str], str]:
    kw = exp.get("kwargs", {})
    if exp["type"] == "expect_column_values_to_be_unique":
        return [kw["column"]], "any"
    how = kw.get("ignore_row_if", "all_values_are_missing")
    return list(kw["column_list"]), {"all_values_are_missing": "all", "any_value_is_missing": "any"}.get(how, "never")


def validate_relation(
    suite: dict, con: Any, relation: str, table_rows: int | None = None, scope: str = ""
) -> SuiteOutcome:
    """The suite executed in DuckDB over `relation` (a table, view or parenthesised query on `con`): one
    aggregate query for the column-map expectations, minima and maxima, one GROUP BY per uniqueness
    expectation, and a sample of up to five offending rows for each failed one. Counts and verdicts are
    those of GX's pandas engine (tests/test_gates_duckdb.py proves it on every suite of the reference
    city); an expectation type not compiled here sends the whole suite through GX (validate_batches).
    `scope` says which rows these are, for Data Docs."""
    if any(e["type"] not in DUCKDB_EXPECTATIONS for e in suite["expectations"]):
        return validate_batches(
            suite, con.sql(f"select * from {relation}").to_arrow_reader(CHUNK_ROWS), table_rows=table_rows
        )
    described = con.execute(f"describe select * from {relation}").fetchall()
    names = [r[0] for r in described]
    types = {r[0]: str(r[1]) for r in described}
    per_row = [e for e in suite["expectations"] if e["type"] != _TOTAL_ROWS]
    outcomes = [ExpectationOutcome(e["type"], {**e.get("kwargs", {})}) for e in per_row]
    selects, params, jobs = ["count(*)"], [], []
    for exp, outcome in zip(per_row, outcomes, strict=True):
        kw = exp.get("kwargs", {})
        absent = [c for c in _columns_of(kw) if c not in names]
        if exp["type"] in _SCHEMA_ONLY:
            _judge_schema(outcome, names)
        elif absent:
            outcome.success = False
            outcome.observed_value = f"column {', '.join(absent)} not in the table"
        elif exp["type"] in _MAP_SQL:
            local: list = []
            missing, unexpected = _map_sql(exp, types, local)
            cond = f"not {missing} and {unexpected}" if missing else unexpected
            selects += [f"count(*) filter (where {missing})" if missing else "0", f"count(*) filter (where {cond})"]
            params += local
            jobs.append((outcome, len(selects) - 2, cond, local))
        elif exp["type"] in _EXTREMES:
            col = kw["column"]
            selects.append(
                f"{_EXTREMES[exp['type']].__name__}({quote(col)}) filter (where not {_missing([col], types)})"
            )
            jobs.append((outcome, len(selects) - 1, None, []))
    figures = con.execute(f"select {', '.join(selects)} from {relation}", params).fetchall()[0]
    rows = int(figures[0])
    for outcome, at, cond, local in jobs:
        if cond is None:
            outcome.observed_value = _plain(figures[at])
            outcome.success = _in_bounds(outcome.observed_value, outcome.kwargs)
            continue
        outcome.is_map = True
        outcome.element_count, outcome.missing_count = rows, int(figures[at])
        outcome.unexpected_count = int(figures[at + 1])
        outcome.judge()
        if not outcome.success:
            outcome.sample = _sample(con, f"select * from {relation} where {cond}", local)
    for exp, outcome in zip(per_row, outcomes, strict=True):
        if exp["type"] in _UNIQUE and outcome.observed_value is None:
            _judge_unique(con, relation, exp, outcome, types, rows)
    result = _with_row_counts(suite, outcomes, rows, table_rows)
    result.scope = scope
    return result


def _columns_of(kwargs: dict) -> list[str]:
    cols: list[str] = []
    for key in _COLUMN_KWARGS:
        value = kwargs.get(key)
        cols += [value] if isinstance(value, str) else list(value or [])
    return cols


def _judge_schema(outcome: ExpectationOutcome, names: list[str]) -> None:
    """GX's verdict on an expectation about the columns alone."""
    kw = outcome.kwargs
    if outcome.type == "expect_column_to_exist":
        index = kw.get("column_index")
        outcome.success = kw["column"] in names and (
            index is None or (index < len(names) and names[index] == kw["column"])
        )
        return
    outcome.observed_value = list(names)
    if outcome.type == "expect_table_columns_to_match_ordered_list":
        outcome.success = names == list(kw["column_list"])
    elif outcome.type == "expect_table_columns_to_match_set":
        wanted = set(kw["column_set"])
        outcome.success = set(names) == wanted if kw.get("exact_match", True) else wanted <= set(names)
    else:
        outcome.observed_value = len(names)
        outcome.success = len(names) == kw["value"]


def _judge_unique(con: Any, relation: str, exp: dict, outcome: ExpectationOutcome, types: dict, rows: int) -> None:
    """GX's uniqueness: every row whose value (or combination) repeats among the non-missing rows is unexpected."""
    cols, how = _unique_columns(exp)
    missing = _missing(cols, types, how) if how != "never" else "false"
    keys = ", ".join(quote(c) for c in cols)
    dups = f"select {keys} from {relation} where not {missing} group by {keys} having count(*) > 1"
    outcome.is_map = True
    outcome.element_count = rows
    outcome.missing_count, outcome.unexpected_count = (
        int(v or 0)
        for v in con.execute(
            f"""select (select count(*) from {relation} where {missing}),
                       (select sum(n) from (select count(*) as n from {relation} where not {missing}
                                            group by {keys} having count(*) > 1))"""
            if cols
            else "select 0, 0"
        ).fetchall()[0]
    )
    outcome.judge()
    if not outcome.success:
        same = " and ".join(f"r.{quote(c)} is not distinct from d.{quote(c)}" for c in cols)
        outcome.sample = _sample(
            con,
            f"select * from {relation} r where not {missing} and exists (select 1 from ({dups}) d where {same})",
            [],
        )


def _sample(con: Any, sql: str, params: list) -> list[dict]:
    df = con.execute(f"{sql} limit {SAMPLE_ROWS}", params).df()
    return json.loads(df.to_json(orient="records", date_format="iso"))


def _plain(value: Any) -> Any:
    """A DuckDB value as GX's pandas engine reports it (numbers as float / int)."""
    from decimal import Decimal

    return float(value) if isinstance(value, Decimal) else value


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
        outcome.missing_count += int(res.get("missing_count") or 0)
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
        outcome.success = _in_bounds(outcome.observed_value, outcome.kwargs)
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


def data_docs(outcome: SuiteOutcome, path: Path) -> Path:
    """The GX Data Docs page (HTML) of one validation run at `path`, rendered by GX from its validation
    result. A failed validation (the page an engineer opens next) is rendered now. A passing one is
    written as its outcome (`path` with `.json`, a few KB) and rendered from it when first asked for
    (`render_data_docs`: the docs server does it on request, `citylake docs` for every pending page):
    importing GX's renderer and rendering every gate's page costs seconds on each run, for pages
    rarely read. Either way the page is GX's, from the same validation result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if outcome.success and outcome.gx_result is None:
        pending = path.with_suffix(".json")
        tmp = pending.with_suffix(".json.tmp")
        record = {f: getattr(outcome, f) for f in ("suite", "rows", "table_rows", "scope")}
        record["expectations"] = [asdict(e) for e in outcome.expectations]
        tmp.write_text(json.dumps(record, default=str), encoding="utf-8")
        tmp.replace(pending)
        return path
    _write_data_docs(outcome, path)
    return path


def render_data_docs(path: Path) -> bool:
    """Render the Data Docs page `path` from its pending outcome (see `data_docs`) when it is not
    rendered yet; False when there is no such validation."""
    pending = path.with_suffix(".json")
    if path.is_file():
        return True
    try:
        record = json.loads(pending.read_text(encoding="utf-8"))
    except FileNotFoundError:  # no such validation, or another request rendered it just now
        return path.is_file()
    record["expectations"] = [ExpectationOutcome(**e) for e in record["expectations"]]
    _write_data_docs(SuiteOutcome(**record), path)
    pending.unlink(missing_ok=True)
    return True


def _write_data_docs(outcome: SuiteOutcome, path: Path) -> None:
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    from orchestration.docs_site import offline_data_docs

    result = outcome.gx_result or gx_result(outcome)
    html = DefaultJinjaPageView().render(ValidationResultsPageRenderer().render(result))
    # readable with no network; Home goes to the Data Docs index beside the page's folder; written
    # whole (a reader never sees half a page)
    tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(offline_data_docs(html, "../index.html"), encoding="utf-8")
    tmp.replace(path)


def gx_result(outcome: SuiteOutcome) -> Any:
    """GX's validation result of a suite executed in DuckDB: the objects GX's own engine returns, filled
    with the counts found, so that Data Docs render it like any GX validation."""
    from great_expectations.core import ExpectationSuiteValidationResult, ExpectationValidationResult
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration
    from great_expectations.expectations.registry import get_expectation_impl

    results = []
    for o in outcome.expectations:
        if o.is_map:
            considered = o.element_count - o.missing_count
            pct = 100.0 * o.unexpected_count / considered if considered else None
            res = {
                "element_count": o.element_count,
                "unexpected_count": o.unexpected_count,
                "unexpected_percent": pct,
                "missing_count": o.missing_count,
                "missing_percent": 100.0 * o.missing_count / o.element_count if o.element_count else None,
                "unexpected_percent_total": 100.0 * o.unexpected_count / o.element_count if o.element_count else None,
                "unexpected_percent_nonmissing": pct,
                "partial_unexpected_list": [r.get(o.kwargs.get("column")) for r in o.sample]
                if "column" in o.kwargs
                else [],
            }
        else:
            res = {"observed_value": o.observed_value} if o.observed_value is not None else {}
        # citylake's own notes (scope, the volume rule's max_drop) are not GX kwargs: they go in meta
        fields = get_expectation_impl(o.type).__fields__
        kwargs = {k: v for k, v in o.kwargs.items() if k in fields}
        results.append(
            ExpectationValidationResult(
                success=o.success,
                expectation_config=ExpectationConfiguration(
                    type=o.type,
                    kwargs=kwargs,
                    meta={k: v for k, v in o.kwargs.items() if k not in fields}
                    | {"scope": o.kwargs.get("scope") or outcome.scope},
                ),
                result=json.loads(json.dumps(res, default=str)),
            )
        )
    passed = sum(r.success for r in results)
    return ExpectationSuiteValidationResult(
        success=outcome.success,
        results=results,
        suite_name=outcome.suite,
        statistics={
            "evaluated_expectations": len(results),
            "successful_expectations": passed,
            "unsuccessful_expectations": len(results) - passed,
            "success_percent": 100.0 * passed / len(results) if results else None,
        },
        meta={"rows_validated": outcome.rows, "table_rows": outcome.table_rows, "scope": outcome.scope},
    )


def split_rows(suite: dict, table: pa.Table) -> tuple[pa.Table, list[tuple[int, str]]]:
    """Row-level gate at bronze: the rows every column-map expectation accepts, and (row, reason) for
    the others, the reason naming the first expectation (in the suite's order) that failed. Table-level
    expectations are left to the asset check. Executed in DuckDB in one pass (each expectation compiled
    as in validate_relation); GX's pandas engine for a suite with an expectation not compiled there."""
    row_level = [
        e
        for e in suite.get("expectations", [])
        if e["type"].startswith("expect_column_values_") and e.get("kwargs", {}).get("column") in table.column_names
    ]
    if not row_level or table.num_rows == 0:
        return table, []
    reasons = _failing_rows_duckdb(row_level, table)
    if reasons is None:
        reasons = _failing_rows_gx(suite["name"], row_level, table)
    if not reasons:
        return table, []
    keep = np.ones(table.num_rows, bool)
    keep[list(reasons)] = False
    return table.filter(keep), sorted(reasons.items())


@functools.cache
def _scratch_database() -> Any:
    import duckdb

    return duckdb.connect()


@contextlib.contextmanager
def scratch() -> Iterator[Any]:
    """A fresh DuckDB connection to this process's one in-memory scratch database, for queries over Arrow
    data registered on it (the row gate, a load's gate). Opening a database costs ~20 ms, more than
    gating a typical file: a load of hundreds of files opened one per file. Each call gets its own
    connection (cursor), so registered names and settings never meet another caller's, in any thread."""
    con = _scratch_database().cursor()
    try:
        yield con
    finally:
        con.close()


def _reason(exp: dict) -> str:
    return f"failed {exp['type']}({exp['kwargs'].get('column')})"


def _failing_rows_duckdb(row_level: list[dict], table: pa.Table) -> dict[int, str] | None:
    """{row: reason} in one DuckDB pass; None when an expectation is not compiled (or its values do not
    compare with the column's type: GX then says what it makes of them)."""
    import duckdb

    if any(e["type"] not in _MAP_SQL | {"expect_column_values_to_be_unique"} for e in row_level):
        return None
    columns = table.select(list(dict.fromkeys(e["kwargs"]["column"] for e in row_level)))
    row = "_citylake_row"
    with scratch() as con:
        con.register("landing", columns.append_column(row, pa.array(np.arange(table.num_rows), pa.int64())))
        types = {r[0]: str(r[1]) for r in con.execute("describe landing").fetchall()}
        cases, params = [], []
        for exp in row_level:
            col = exp["kwargs"]["column"]
            if exp["type"] == "expect_column_values_to_be_unique":
                missing = _missing([col], types)
                cond = f"not {missing} and count(*) over (partition by {quote(col)}) > 1"
            else:
                missing, unexpected = _map_sql(exp, types, params)
                cond = f"not {missing} and {unexpected}" if missing else unexpected
            cases.append(f"when {cond} then {literal(_reason(exp))}")
        sql = f"""select {row}, reason from (select {row}, case {" ".join(cases)} end as reason from landing)
                  where reason is not null"""
        try:
            return dict(con.execute(sql, params).fetchall())
        except duckdb.Error:
            return None


def _failing_rows_gx(name: str, row_level: list[dict], table: pa.Table) -> dict[int, str]:
    """{row: reason} from GX's pandas engine, a chunk at a time."""
    reasons: dict[int, str] = {}
    # only the columns the expectations look at are converted (a wide text table costs much as pandas objects)
    table = table.select(list(dict.fromkeys(e["kwargs"]["column"] for e in row_level)))
    strict = [{**e, "kwargs": {k: v for k, v in e["kwargs"].items() if k != "mostly"}} for e in row_level]
    for start in range(0, table.num_rows, CHUNK_ROWS):
        df = table.slice(start, CHUNK_ROWS).to_pandas()
        df.index = pd.RangeIndex(start, start + len(df))
        _, ordered = _validate_df({"name": name, "expectations": strict}, df)
        for exp, r in zip(strict, ordered, strict=True):
            for i in (r.result or {}).get("unexpected_index_list") or []:
                reasons.setdefault(int(i), _reason(exp))
    return reasons


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


def age_sql(column: str) -> str:
    """DuckDB: the hours since a row's `column` (text or timestamp, read as UTC when it names no zone)."""
    return f"(epoch(now()) - epoch(try_cast({quote(column)} as timestamptz))) / 3600.0"


def validate_load(suite: dict, uri: str, batch: str | None, fresh_column: str | None = None) -> SuiteOutcome:
    """A bronze suite on one load, in DuckDB: the row expectations on the rows that load wrote (`_batch`
    = its run id; a rerun's unchanged rows are not rewritten, so they are not judged again), the column
    expectations on the table's columns, the volume rule on the table's total rows (from the Delta log)
    and freshness (`_age_hours`, from `fresh_column`) on the table's newest row."""
    from orchestration.lake import files_with, open_table, parquet_select, rows_where

    table = open_table(uri)
    if table is None:
        return validate_batches(suite, iter([]))
    total = _delta_rows(table)
    fresh = [e for e in suite["expectations"] if fresh_column and e.get("kwargs", {}).get("column") == AGE_COLUMN]
    rest = {**suite, "expectations": [e for e in suite["expectations"] if e not in fresh]}
    with scratch() as con:
        con.execute("set TimeZone = 'UTC'")
        con.register("bronze", table.to_pyarrow_dataset())
        if total is None:  # a file without statistics: counted
            total = con.execute("select count(*) from bronze").fetchall()[0][0]
        load = "(select * from bronze where false)"
        if batch and "://" not in uri:
            # on local disk, the load's rows read by DuckDB from the files that may hold them: nothing
            # materialized (delta-rs's rows of a 4M-row load stayed resident, ~600 MB, seconds after the gate)
            rows = parquet_select(con, table, files_with(table, "_batch", batch))
            load = f"(select * from ({rows}) where _batch = {literal(batch)})"
        elif batch:
            con.register("load", rows_where(table, "_batch", batch))
            load = "load"
        outcome = validate_relation(rest, con, load, table_rows=total, scope=f"rows loaded by run {batch}")
        if fresh:
            ages = f"(select {age_sql(fresh_column)} as {AGE_COLUMN} from bronze)"
            newest = validate_relation({"name": suite["name"], "expectations": fresh}, con, ages)
            for o in newest.expectations:
                o.kwargs["scope"] = "the table's newest row"
            outcome.expectations += newest.expectations
    return outcome


def _delta_rows(table: Any) -> int | None:
    """A Delta table's row count from its log (each added file's statistics); None when a file has none."""
    actions = pa.table(table.get_add_actions(flatten=True))
    if "num_records" not in actions.schema.names or actions.column("num_records").null_count:
        return None
    return int(pc.sum(actions.column("num_records")).as_py() or 0)


#: how long a connection to the warehouse waits for another process to release it (DuckDB: one writer
#: process, and no reader while it writes; a writer needs every reader gone): a model's gate while dbt
#: builds another branch in the UI's multiprocess runs, the bronze views while another run's gate reads
WAREHOUSE_WAIT_S = 900.0


def warehouse_when_free(database: Path, read_only: bool = True, wait_s: float | None = None):
    """A connection to the warehouse (read-only unless asked), waiting while another process holds a lock
    that conflicts with it."""
    import time

    import duckdb

    from orchestration.dbt_build import duckdb_limits

    deadline = time.monotonic() + (WAREHOUSE_WAIT_S if wait_s is None else wait_s)
    while True:
        try:
            return duckdb.connect(str(database), read_only=read_only, config=duckdb_limits())
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def validate_model(suite: dict, database: Path, model: str, window: tuple[str, str] | None) -> SuiteOutcome:
    """A dbt model's suite in DuckDB (read-only on the warehouse): on the rows of the days `window`
    (min_date, max_date: the days the run rebuilt) when given and the model is daily-partitioned, else on
    the whole table; the volume rule on the table's total rows."""
    with warehouse_when_free(database) as con:
        total = con.execute(f"select count(*) from {quote(model)}").fetchall()[0][0]
        names = [r[0] for r in con.execute(f"describe {quote(model)}").fetchall()]
        if window is None or "partition_date" not in names:
            return validate_relation(suite, con, quote(model), table_rows=total, scope="the whole table")
        relation = (
            f"(select * from {quote(model)} where partition_date between "
            f"date {literal(window[0])} and date {literal(window[1])})"
        )
        return validate_relation(suite, con, relation, table_rows=total, scope=f"days {window[0]} to {window[1]}")


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
