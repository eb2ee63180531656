"""`pip install .` (a real wheel, not editable) gives a working `nercc` outside the checkout.

Builds the wheel from this checkout, installs it into a fresh venv under a temporary folder (its
dependencies come from this test's environment through a .pth line, so the test stays offline; this
environment's editable nercc is not activated there), and runs `nercc --version`, `--model-repository` and a
4-worker `nercc demo --batches 20` from another directory: real tritonservers whose Python stubs import the
installed nercc and serve the models shipped in the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from nercc.paths import REPO_ROOT, data_dir

pytest.importorskip("tritonclient.grpc")


def _run(command, cwd, env, timeout=600):
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{command} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv bin folder, environment, a working folder outside the checkout) with the wheel installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    dist = tmp / "dist"
    # build from a clean copy: setuptools reuses ./build, where files of removed modules would linger
    source = tmp / "source"
    skip = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                  ".ruff_cache", "reports", "runs", "checkpoints")

    def ignore(folder, names):  # results folders stay out, but bench/results: the wheel ships some of it
        keep_results = Path(folder) == REPO_ROOT / "bench"
        return set(skip(folder, names)) | ({"results"} & set(names) if not keep_results else set())

    shutil.copytree(REPO_ROOT, source, ignore=ignore)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dist, source],
         cwd=tmp, env=os.environ.copy())
    (wheel,) = dist.glob("nercc-*.whl")
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    (purelib,) = env_dir.glob("lib/python*/site-packages")
    (purelib / "_test_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    # this environment's pip installs into the new venv: no network, no dependencies resolved
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", purelib, wheel],
         cwd=tmp, env=os.environ.copy())
    # `pip --target` does not write console scripts: the entry point as pip would write it
    bin_dir = env_dir / "bin"
    (bin_dir / "nercc").write_text(f"#!{bin_dir / 'python'}\nimport sys\nfrom nercc.cli import main\n"
                                   "sys.exit(main())\n")
    (bin_dir / "nercc").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NERCC_MODEL_REPOSITORY", "VIRTUAL_ENV")}
    env["NERCC_DATA_DIR"] = str(data_dir())  # MNIST for the demo (offline)
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return bin_dir, env, elsewhere


def test_installed_nercc_is_the_wheel(installed):
    bin_dir, env, elsewhere = installed
    out = _run([bin_dir / "nercc", "--version"], elsewhere, env)
    print(out)
    assert out.strip().startswith("nercc ")
    where = _run([bin_dir / "python", "-c", "import nercc, nercc.paths as p; print(nercc.__file__); "
                  "print(p.IN_CHECKOUT, p.MODEL_REPOSITORY, p.PYTHON_BACKENDS)"], elsewhere, env).split()
    assert not Path(where[0]).is_relative_to(REPO_ROOT), where
    assert where[1] == "False"
    assert (Path(where[2]) / "lenet5" / "1" / "model.onnx").is_file()
    assert (Path(where[3]) / "encoder" / "model.py").is_file()


def test_every_command_loads_from_the_wheel(installed):
    """The tools behind the commands ship in the wheel (no "not built yet", no checkout on sys.path)."""
    bin_dir, env, elsewhere = installed
    for command in (["tune"], ["bench", "accuracy"], ["bench", "sweep"], ["loadtest"], ["export"], ["serve"],
                    ["demo"], ["worker"], ["master"]):
        out = _run([bin_dir / "nercc", *command, "--help"], elsewhere, env)
        assert out.startswith(f"usage: nercc {' '.join(command)}"), out[:200]
        if len(command) == 1:  # (sub-commands take it too: it is read before any parsing)
            assert "--model-repository" in out, command


def test_model_repository_flag(installed, tmp_path):
    """--model-repository DIR points the command at another repository (here: a copy holding lenet5 only)."""
    bin_dir, env, elsewhere = installed
    repository = tmp_path / "models"
    shutil.copytree(REPO_ROOT / "model_repository" / "lenet5", repository / "lenet5", symlinks=False)
    written = tmp_path / "written"
    _run([bin_dir / "nercc", "serve", "--write-repository", written, "--model", "lenet5", "--role", "worker",
          "--native-onnxruntime", "--model-repository", repository], elsewhere, env)
    assert (written / "lenet5" / "1" / "model.onnx").resolve() == (repository / "lenet5" / "1" / "model.onnx")
    bad = subprocess.run([bin_dir / "nercc", "--model-repository", tmp_path / "missing", "demo"], cwd=elsewhere,
                         env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "no such folder" in bad.stderr


def test_simulator_reads_the_shipped_measurements(installed):
    """`nercc simulate` from another folder finds the committed calibration and accuracy tables in the wheel."""
    bin_dir, env, elsewhere = installed
    _run([bin_dir / "nercc", "simulate", "--workers", "12", "--inputs", "4", "--batches", "300",
          "--schemes", "uncoded,nercc", "--out", "sim"], elsewhere, env)
    summary = json.loads((elsewhere / "sim" / "summary.json").read_text())
    assert "_shipped" in summary["settings"]["calibration"], summary["settings"]["calibration"]
    nercc = next(iter(summary["profiles"].values()))["schemes"]["nercc"]
    assert nercc["rel_acc"] is not None and 0.5 < nercc["rel_acc"] <= 1.0, nercc


def test_demo_from_the_wheel(installed):
    bin_dir, env, elsewhere = installed
    out = _run([bin_dir / "nercc", "demo", "--workers", "4", "--inputs", "2", "--batches", "20"], elsewhere, env)
    print(out[out.index("lenet5: N=4"):] if "lenet5: N=4" in out else out)
    assert "all servers stopped" in out
    rows = {line.split()[0] for line in out.splitlines() if line.strip()}
    for scheme in ("uncoded", "replication", "bacc", "nercc"):
        assert scheme in rows, scheme
