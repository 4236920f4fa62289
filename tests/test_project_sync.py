"""The rendered dbt project under <state_dir>/dbt (orchestration/dbt_build.py): `_sync` makes its files
equal a new rendering's, leaving dbt's own output (target/, logs/, dbt_packages/) alone, and
`_fingerprint` (which decides whether dbt parses again) covers exactly the rendered files, without
walking dbt's output (thousands of files of compiled SQL, once on every load of the definitions)."""

from __future__ import annotations

import hashlib
import random
import shutil
from pathlib import Path

import pytest

from orchestration import dbt_build


def _tree(root: Path, rng: random.Random, names: list[str]) -> dict[str, bytes]:
    files = {}
    for _ in range(rng.randint(5, 25)):
        rel = "/".join(rng.choice(names) for _ in range(rng.randint(1, 4))) + f"_{rng.randint(0, 9)}.sql"
        if rel.split("/")[0] in ("target", "logs", "dbt_packages"):
            continue
        if any(rel.startswith(other + "_") or other.startswith(rel) for other in files):
            continue
        files[rel] = rng.randbytes(rng.randint(0, 40))
    for rel, data in files.items():
        if (root / rel).parent.is_file():
            continue
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _reference_fingerprint(project: Path) -> str:
    """The fingerprint as first written (a walk of everything, dbt's output filtered out after)."""
    h = hashlib.sha256()
    for p in sorted(project.rglob("*")):
        if p.is_file() and p.relative_to(project).parts[0] not in ("target", "logs"):
            h.update(str(p.relative_to(project)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("seed", [3, 17, 29])
def test_sync_makes_the_project_equal_the_rendering_and_keeps_dbts_output(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    names = ["models", "seeds", "macros", "staging", "target", "logs", "dbt_packages", "a", "b"]
    old, new = tmp_path / "project", tmp_path / "render"
    old.mkdir()
    new.mkdir()
    _tree(old, rng, names)
    dbt_output = {}
    for top in ("target", "logs", "dbt_packages"):
        for i in range(rng.randint(1, 30)):
            path = old / top / f"step-{i % 4}" / "compiled" / f"m{i}.sql"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(rng.randbytes(8))
            dbt_output[path.relative_to(old).as_posix()] = path.read_bytes()
    rendered = _tree(new, rng, names)
    before = dbt_build._fingerprint(old)
    assert before == _reference_fingerprint(old)

    dbt_build._sync(new, old)

    now = {p.relative_to(old).as_posix(): p.read_bytes() for p in old.rglob("*") if p.is_file()}
    assert now == {**rendered, **dbt_output}  # the rendering, plus dbt's output untouched
    # no folder left empty by a file that went (outside dbt's output)
    assert not [p for p in old.rglob("*") if p.is_dir() and not any(p.iterdir())]
    assert dbt_build._fingerprint(old) == _reference_fingerprint(old)
    shutil.rmtree(old / "dbt_packages")  # (packages are part of the fingerprint, as they were; none here)
    assert dbt_build._fingerprint(old) == dbt_build._fingerprint(new)
    # dbt's output does not move the fingerprint; a rendered file does
    (old / "target" / "more.json").write_text("{}")
    assert dbt_build._fingerprint(old) == dbt_build._fingerprint(new)
    if rendered:
        (old / sorted(rendered)[0]).write_bytes(b"changed")
        assert dbt_build._fingerprint(old) != dbt_build._fingerprint(new)
