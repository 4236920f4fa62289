"""Great Expectations suites (expectations/*.json) run over a table, a chunk at a time.

GX 1.x on DuckDB through SQLAlchemy hits an upstream bug, so citylake streams the table out of
DuckDB or Delta as Arrow record batches and validates each batch as a pandas DataFrame: memory stays
bounded by the chunk size whatever the table's size, and results are summed over the chunks.

A suite file is named after the asset key it guards, dots for slashes:
expectations/marts.indicators.json guards marts/indicators. A kwarg value written "$district_codes" or
"$area_ids" (district codes plus CITY) is replaced by the city's codes, so one suite serves every city.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

EXPECTATIONS_DIR = Path(__file__).resolve().parent.parent / "expectations"
CHUNK_ROWS = 500_000
SAMPLE_ROWS = 5


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

    def describe(self) -> str:
        target = self.kwargs.get("column") or self.kwargs.get("column_set") or ""
        if self.unexpected_count:
            return f"{self.type}({target}): {self.unexpected_count} of {self.element_count} rows unexpected"
        return f"{self.type}({target}): observed {self.observed_value}"


@dataclass
class SuiteOutcome:
    suite: str
    rows: int
    expectations: list[ExpectationOutcome]

    @property
    def success(self) -> bool:
        return all(e.success for e in self.expectations)

    @property
    def failed(self) -> list[ExpectationOutcome]:
        return [e for e in self.expectations if not e.success]


def load_suite(path: Path, substitutions: dict[str, list]) -> dict:
    """The suite JSON with `$name` placeholders replaced."""
    suite = json.loads(path.read_text(encoding="utf-8"))

    def sub(value: Any) -> Any:
        if isinstance(value, str) and value.startswith("$"):
            if value[1:] not in substitutions:
                raise ValueError(
                    f"{path}: unknown placeholder {value}; use one of {', '.join('$' + k for k in substitutions)}"
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


def validate_batches(suite: dict, batches: Iterator[pa.RecordBatch]) -> SuiteOutcome:
    """Validate every Arrow batch against the suite; unexpected counts and samples are summed."""
    import great_expectations as gx

    gx_suite = gx.ExpectationSuite(name=suite["name"], expectations=suite["expectations"])
    outcomes = [ExpectationOutcome(e["type"], e.get("kwargs", {})) for e in suite["expectations"]]
    rows = 0
    seen_any = False
    for batch in batches:
        if batch.num_rows == 0 and seen_any:
            continue
        seen_any = True
        df = batch.to_pandas(types_mapper=None)
        df.index = pd.RangeIndex(rows, rows + len(df))
        rows += len(df)
        result = (
            _batch_definition()
            .get_batch(batch_parameters={"dataframe": df})
            .validate(gx_suite, result_format={"result_format": "COMPLETE"})
        )
        for outcome, r in zip(outcomes, result.results, strict=True):
            res = r.result or {}
            outcome.success = outcome.success and bool(r.success)
            outcome.element_count += int(res.get("element_count") or 0)
            outcome.unexpected_count += int(res.get("unexpected_count") or 0)
            if res.get("observed_value") is not None:
                outcome.observed_value = res["observed_value"]
            if r.exception_info and r.exception_info.get("raised_exception"):
                outcome.success = False
                outcome.observed_value = r.exception_info.get("exception_message")
            need = SAMPLE_ROWS - len(outcome.sample)
            idx = (res.get("unexpected_index_list") or [])[:need]
            if idx:
                sample = df.loc[[i for i in idx if i in df.index]].head(need)
                outcome.sample.extend(json.loads(sample.to_json(orient="records", date_format="iso")))
    return SuiteOutcome(suite=suite["name"], rows=rows, expectations=outcomes)


def duckdb_batches(database: Path, table: str, chunk_rows: int = CHUNK_ROWS) -> Iterator[pa.RecordBatch]:
    """A table of a DuckDB file as Arrow batches (read-only connection, closed at the end)."""
    import duckdb

    con = duckdb.connect(str(database), read_only=True)
    try:
        reader = con.sql(f"select * from {table}").to_arrow_reader(chunk_rows)
        yield from reader
    finally:
        con.close()


def delta_batches(uri: str, chunk_rows: int = CHUNK_ROWS) -> Iterator[pa.RecordBatch]:
    from orchestration.lake import open_table

    dt = open_table(uri)
    if dt is None:
        return
    yield from dt.to_pyarrow_dataset().to_batches(batch_size=chunk_rows)
