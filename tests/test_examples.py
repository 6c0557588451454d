"""The README's Python example is examples/quickstart.py, and it runs as written (on a tiny teacher)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.py"


def test_readme_python_example_is_the_quickstart_script():
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert QUICKSTART.read_text() in blocks


def test_quickstart_runs_and_its_output_generates_from_the_cli(tiny_llama, tiny_tokenizer, tmp_path):
    teacher = tmp_path / "teacher"
    tiny_llama.save_pretrained(teacher)
    tiny_tokenizer.save_pretrained(teacher)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(QUICKSTART), str(teacher), str(tmp_path / "lizard")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert re.search(r"cache after 2\d tokens: 0\.\d\d MiB", done.stdout)
    generated = subprocess.run([sys.executable, "-m", "lizardlm", "generate", "--model", str(tmp_path / "lizard"),
                                "--prompt", "Hello", "--max-new-tokens", "3"],
                               capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert generated.returncode == 0, generated.stderr
    assert re.search(r"\d+ prompt \+ \d+ new tokens in [\d.]+ s \([\d.]+ new tokens/s\)", generated.stderr)
