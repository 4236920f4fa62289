"""dagster-dbt without dbt-core in the run's process: about 2 s off every `citylake run` and code load.

`import dagster_dbt` imports dbt-core's adapters and artifact schemas (~2 s of CPU) for two things only:
the version constants of `dagster_dbt.compat`, and evaluating each `@dbt_assets` selection (`select=`,
`exclude=`) with dbt's graph selector against the manifest. citylake's process needs neither of dbt's
own modules otherwise: dbt runs in its own processes (orchestration/warm_dbt.py), dagster-dbt is told
dbt's version from the installed package and opens no adapter (`CityDbtResource`).

So `import_dagster_dbt()` imports dagster-dbt with `dbt` hidden, which takes dagster-dbt's own path for an
environment without dbt-core (dbt Fusion's: its `compat` module then defines the same status and
node-type names as plain string enums), and evaluates each selection with dagster-dbt's own dbt-based function once per
manifest, keeping the answer beside the manifest (`target/dagster_selections.json`, keyed by the
invocation of dbt that wrote the manifest): the next process that loads the same project reads the
selected node ids from there and never imports dbt. A changed project has a new manifest, so its
selections are evaluated again, in exactly dbt's semantics (indirect test selection included). Nothing
else changes: the assets, checks and dbt commands are the ones dagster-dbt builds from the same ids.

`tests/test_dbt_selection.py` loads random cities with and without dbt and compares the asset graphs.
"""

from __future__ import annotations

import importlib.abc
import json
import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CACHE = "dagster_selections.json"
_LOCK = threading.Lock()


class _HideDbt(importlib.abc.MetaPathFinder):
    """An import finder under which `dbt` (dbt-core) and its submodules cannot be found."""

    def find_spec(self, name, path=None, target=None):
        if name == "dbt" or name.startswith("dbt."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden while dagster_dbt is imported)", name=name)
        return None


def import_dagster_dbt():
    """The `dagster_dbt` module, imported without dbt-core unless dbt is already imported here, with its
    selections read from the manifest's cache (see the module's docstring)."""
    if "dagster_dbt" not in sys.modules and "dbt" not in sys.modules:
        finder = _HideDbt()
        sys.meta_path.insert(0, finder)
        try:
            import dagster_dbt
        finally:
            sys.meta_path.remove(finder)
    import dagster_dbt
    import dagster_dbt.asset_utils

    dagster_dbt.asset_utils.select_unique_ids = select_unique_ids  # (what `@dbt_assets` calls)
    return dagster_dbt


def select_unique_ids(
    select: str, exclude: str, selector: str, project: Any, manifest_json: Mapping[str, Any]
) -> set[str]:
    """dagster-dbt's `select_unique_ids`, answered from the manifest's selections file when it holds this
    selection, else evaluated by dagster-dbt's dbt-based function (which imports dbt) and written there."""
    from dagster_dbt.utils import _select_unique_ids_from_manifest

    digest, cache = _key(project, manifest_json)
    entry = f"select={select}\nexclude={exclude}\nselector={selector}"
    with _LOCK:
        known = _read(cache, digest)
        if entry in known:
            return set(known[entry])
        ids = set(_select_unique_ids_from_manifest(select, exclude, selector, manifest_json, project))
        if cache is not None:
            known = _read(cache, digest)
            known[entry] = sorted(ids)
            tmp = cache.with_name(f".{CACHE}.{os.getpid()}")
            try:
                tmp.write_text(json.dumps({"manifest": digest, "selections": known}))
                tmp.replace(cache)
            except OSError:  # a read-only project: evaluated each time, as dagster-dbt does
                tmp.unlink(missing_ok=True)
        return ids


def _key(project: Any, manifest_json: Mapping[str, Any]) -> tuple[str, Path | None]:
    """The manifest's identity (the id and time of the dbt invocation that wrote it: a parse of a changed
    project is a new invocation) and the selections file beside it (none without a project or an id)."""
    meta = manifest_json.get("metadata") or {}
    if project is None or not meta.get("invocation_id"):
        return "", None
    return f"{meta['invocation_id']} {meta.get('generated_at', '')}", Path(project.manifest_path).with_name(CACHE)


def _read(cache: Path | None, digest: str) -> dict[str, list[str]]:
    if cache is None:
        return {}
    try:  # (a file being replaced, or not yet written, reads as empty)
        data = json.loads(cache.read_text())
    except (OSError, ValueError):
        return {}
    return data.get("selections", {}) if digest and data.get("manifest") == digest else {}
