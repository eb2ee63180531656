"""Nothing in the repository names a tool or folder that only the development machines have: a user's checkout
must not be told to run a lock script it lacks, nor read results that point at a path it does not have."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from nercc.paths import REPO_ROOT

#: What a tracked text file must not contain: the development machines' lock script (the repository ships
#: tools/exclusive instead) and absolute paths into their work folder.
FORBIDDEN = re.compile("cpu-" + "exclusive|(?<![\\w.~-])/" + "work/[\\w.-]")


def _tracked_files():
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("needs a git checkout (the tracked files)")
    out = subprocess.run(["git", "-C", str(REPO_ROOT), "ls-files", "-z"], capture_output=True, check=True)
    return [REPO_ROOT / name for name in out.stdout.decode().split("\0") if name]


def _offences(text: str):
    return [(number, line.strip()[:160]) for number, line in enumerate(text.splitlines(), 1)
            if FORBIDDEN.search(line)]


def test_the_pattern_finds_what_it_should():
    assert _offences("run it under " + "cpu-" + "exclusive first")
    assert _offences('"calibration": "/' + 'work/w10/bench/results/scale/calibration.json"')
    assert _offences("$ /" + "work/w9tail/.venv/bin/python -m nercc.loadtest.openloop")
    assert not _offences("tools/exclusive nercc simulate --measure --out bench/results/scale/real_N48_K12")
    assert not _offences("model_repository/lenet5/1/model.onnx ~/work/x  ../shared/data")


def test_no_tracked_text_file_names_a_development_machine_path():
    found = []
    for path in _tracked_files():
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary (ONNX, PNG, gzip)
        for number, line in _offences(data.decode("utf-8", errors="replace")):
            found.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line}")
    assert not found, "development-machine names in tracked files:\n" + "\n".join(found[:40])
