"""The README's results tables are exactly what benchmarks/readme_table.py builds from the committed
result files, so every number in them traces to a JSON under benchmarks/results/."""

from __future__ import annotations

import contextlib
import importlib.util
import io
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_results_match_the_committed_result_files():
    spec = importlib.util.spec_from_file_location("readme_table", ROOT / "benchmarks" / "readme_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        module.main([])
    tables = out.getvalue().strip()
    assert tables, "no result files found"
    assert tables in (ROOT / "README.md").read_text(), "README results are stale: run python benchmarks/readme_table.py"


def test_docs_results_hold_every_result_files_table():
    """docs/results.md holds every committed result file's table (``readme_table.py --all``)."""
    module = _readme_table()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        module.main(["--all"])
    tables = out.getvalue().strip()
    assert all(f"(`{p.name}`" in tables for p in module.every_table())
    assert tables in (ROOT / "docs" / "results.md").read_text(), \
        "docs/results.md is stale: run python benchmarks/readme_table.py --all"


def _readme_table():
    spec = importlib.util.spec_from_file_location("readme_table", ROOT / "benchmarks" / "readme_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_study_section_matches_the_study_files():
    """Between the README's study markers: the table of every benchmarks/results/study-*.json, or the
    placeholder while there is none."""
    module = _readme_table()
    readme = (ROOT / "README.md").read_text()
    assert module.STUDY_START in readme and module.STUDY_END in readme
    section = readme.split(module.STUDY_START)[1].split(module.STUDY_END)[0].strip()
    assert section == module.study_tables(), "README study table is stale: run python benchmarks/readme_table.py --study"
