"""The CLI starts without torch or transformers: ``--help`` of every command imports neither."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECK = """
import sys
from lizardlm.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
import lizardlm
heavy = sorted(m for m in ("torch", "transformers", "peft", "accelerate", "matplotlib") if m in sys.modules)
print("heavy:", ",".join(heavy))
"""


@pytest.mark.parametrize("argv", [["--help"], ["linearize", "--help"], ["eval", "--help"], ["generate", "--help"]])
def test_help_imports_no_heavy_module(argv):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", CHECK.format(argv=argv)], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage: lizardlm" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "heavy:"
