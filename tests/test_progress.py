"""Progress bars: one helper for the whole package, quiet when the output is a log file, not a terminal."""

from __future__ import annotations

import ast
import io
import subprocess
import sys

from nercc.paths import REPO_ROOT
from nercc.progress import NON_TTY_INTERVAL_S, is_terminal, progress_bar


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_every_progress_bar_in_the_package_goes_through_the_helper():
    direct = []
    for path in sorted((REPO_ROOT / "nercc").rglob("*.py")):
        if path.name == "progress.py" and path.parent.name == "nercc":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            if any(name == "tqdm" or name.startswith("tqdm.") for name in names):
                direct.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert not direct, "tqdm imported directly (use nercc.progress.progress_bar): " + ", ".join(direct)


def test_interval_follows_the_stream():
    log, tty = io.StringIO(), _Terminal()
    assert not is_terminal(log) and is_terminal(tty)
    with progress_bar(total=3, file=log) as bar:
        assert bar.mininterval == NON_TTY_INTERVAL_S and bar.maxinterval >= NON_TTY_INTERVAL_S
    with progress_bar(total=3, file=tty) as bar:
        assert bar.mininterval == 0.1  # tqdm's own default on a terminal
    with progress_bar(total=3, file=log, mininterval=0.5) as bar:  # an explicit interval wins
        assert bar.mininterval == 0.5


_LOOP = """
import sys, time
from nercc.progress import progress_bar
for _ in progress_bar(range(300), desc="work"):
    time.sleep(0.005)
"""


def _redraws(code: str) -> tuple:
    """(redraws, stderr) of ``code`` run with stderr to a pipe (bytes: text mode would fold \\r into \\n)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, check=True)
    return out.stderr.count(b"\r") + out.stderr.count(b"\n"), out.stderr.decode(errors="replace")


def test_a_log_gets_a_few_redraws_not_hundreds():
    """1.5 s of a bar written to a pipe: tqdm alone redraws ~15 times (every 0.1 s); through the helper the
    first and the last draw only."""
    redraws, text = _redraws(_LOOP)
    assert "300/300" in text and redraws <= 4, text
    plain, _ = _redraws(_LOOP.replace("from nercc.progress import progress_bar", "from tqdm import tqdm as progress_bar"))
    assert plain > 2 * redraws  # what the helper saves (and proof that this test can fail)
