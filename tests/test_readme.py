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
        module.main()
    tables = out.getvalue().strip()
    assert tables, "no result files found"
    assert tables in (ROOT / "README.md").read_text(), "README results are stale: run python benchmarks/readme_table.py"
