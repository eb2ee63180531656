"""Accuracy benchmark and tuning on the real LeNet5 ONNX model (onnxruntime in-process, MNIST test images).

Fast versions of `nercc bench accuracy` and `nercc tune`: a few seeded trials, so the checks are
deterministic and can fail for real (a broken encoder/decoder, wrong worker order or lams give MSEs of
0.1-1 and lose to BACC).
"""

from __future__ import annotations

import argparse
import csv
import json

import numpy as np
import pytest

from nercc.bench import accuracy, figures, tune
from nercc.bench import cli as bench_cli
from nercc.models import load_model_info
from nercc.profiles import load_profile, lookup, save_entry

MODEL = "lenet5"


def _args(configure, argv):
    parser = argparse.ArgumentParser()
    configure(parser)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def lenet():
    info = load_model_info(MODEL)
    if not info.onnx_path.exists():
        pytest.fail(f"{info.onnx_path} is missing: the LeNet5 ONNX is committed; run `nercc export lenet5`")
    return info


@pytest.fixture(scope="module")
def report(lenet, tmp_path_factory):
    """A small `nercc bench accuracy` run at the paper's setting N = 100, K = 20, S in {0, 40}."""
    out = tmp_path_factory.mktemp("bench")
    args = _args(accuracy.configure, ["--model", MODEL, "--workers", "100", "--inputs", "20", "--stragglers",
                                      "0,40", "--trials", "40", "--seed", "0", "--no-tune", "--quiet",
                                      "--out", str(out)])
    assert accuracy.main(args) == 0
    return out


def test_accuracy_json_schema(report):
    data = json.loads((report / "accuracy_lenet5_N100_K20.json").read_text())
    for key in ("model", "N", "K", "trials", "seed", "command", "base_accuracy", "results", "lams", "eval_split"):
        assert key in data, key
    assert (data["model"], data["N"], data["K"], data["trials"], data["seed"]) == (MODEL, 100, 20, 40, 0)
    assert data["command"].startswith("nercc bench accuracy --model lenet5 --workers 100 --inputs 20")
    assert data["eval_split"] == "test"
    # 40 trials x 20 inputs, disjoint: 800 distinct MNIST test images; LeNet5 gets ~99% of them right
    assert data["eval_inputs_distinct"] == 800
    assert 0.97 < data["base_accuracy"] <= 1.0
    assert set(data["results"]) == {"0", "40"}
    for by_scheme in data["results"].values():
        assert set(by_scheme) == {"bacc", "nercc0", "nercc"}
        for row in by_scheme.values():
            for key in ("mse_mean", "mse_std", "relacc_mean", "relacc_std"):
                assert isinstance(row[key], float) and np.isfinite(row[key]) and row[key] >= 0, (key, row)
    # the tuned lams were read from the committed profile, as the encoder reads them
    for s, lam in data["lams"].items():
        assert lam["source"] == "profile"
        assert (lam["lam_enc"], lam["lam_dec"]) == lookup(load_model_info(MODEL).dir, 20, 100, int(s),
                                                          n_arrived=100 - int(s))
    rows = list(csv.DictReader(open(report / "accuracy_lenet5_N100_K20.csv")))
    assert len(rows) == 2 * 3
    assert {r["scheme"] for r in rows} == {"BACC", "NeRCC-0", "NeRCC"}


def test_nercc_beats_bacc(report):
    data = json.loads((report / "accuracy_lenet5_N100_K20.json").read_text())
    for s in ("0", "40"):
        row = data["results"][s]
        # measured (seed 0, 40 trials): S=0 0.14x, S=40 ~0.7x BACC's MSE
        assert row["nercc"]["mse_mean"] < 0.85 * row["bacc"]["mse_mean"], (s, row)
        assert row["nercc"]["mse_mean"] <= row["nercc0"]["mse_mean"] * 1.02, (s, row)
        # RelAcc no worse than BACC's beyond noise (one wrong prediction of 800 is 0.00125)
        assert row["nercc"]["relacc_mean"] >= row["bacc"]["relacc_mean"] - 0.01, (s, row)
    # with every worker in, all schemes reproduce f's top-1 almost always
    assert data["results"]["0"]["nercc"]["agreement_mean"] > 0.99


def test_figures_and_table(report):
    """`nercc bench figures` on the small run: three PNGs and the Markdown Table 1 carrying the command."""
    args = _args(figures.configure, ["--results", str(report)])
    assert figures.main(args) == 0
    for name in ("fig_accuracy.png", "fig_coded_samples.png"):
        data = (report / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, name
    readme = (report / "README.md").read_text()
    command = json.loads((report / "accuracy_lenet5_N100_K20.json").read_text())["command"]
    assert "## Table 1" in readme and f"`{command}`" in readme
    assert "| NeRCC / BACC MSE |" in readme


def test_tune_round_trip(lenet, tmp_path):
    """`nercc tune` on a small serving setting, written with save_entry, read back through lookup."""
    entry = tune.tune_setting(lenet, n_inputs=4, n_workers=12, n_stragglers=2, seed=0, threads=1,
                              progress=False, trials=12, enc_grid="0,1e-8:1e-4:1", dec_grid="0,1e-8:1e-2:1")
    assert entry["mse"] <= entry["mse_nercc0"] and entry["mse"] < entry["mse_bacc"]
    assert entry["calibration"]["split"] == "train"  # held out: never the test split used for evaluation
    model_dir = tmp_path / MODEL
    save_entry(model_dir, entry)
    profile = load_profile(model_dir)
    assert profile["default"] == {"lam_enc": entry["lam_enc"], "lam_dec": entry["lam_dec"]}
    # the encoder's call (no n_arrived) and the client's call with n_arrived
    assert lookup(model_dir, 4, 12, 2) == (entry["lam_enc"], entry["lam_dec"])
    table = entry.get("lam_dec_by_arrived")
    if table:
        m, lam = next(iter(table.items()))
        assert lookup(model_dir, 4, 12, 2, n_arrived=int(m)) == (entry["lam_enc"], lam)
    # the benchmark reads the same numbers and says where they came from
    choice = accuracy.resolve_smoothing(type("Info", (), {"dir": model_dir})(), 4, 12, 2, tune_missing=False, seed=0,
                                      threads=1, progress=False)
    assert choice.source == "profile" and choice.lam_enc == entry["lam_enc"]


def test_parse_grids_and_lists():
    assert tune.parse_lam_grid("0,1e-6:1e-4:1") == [0.0, 1e-6, 1e-5, 1e-4]
    assert accuracy.parse_int_list("0:60:20") == [0, 20, 40, 60]
    assert accuracy.parse_int_list("0,10") == [0, 10]
    with pytest.raises(ValueError, match="lam grid"):
        tune.parse_lam_grid("-1")
    with pytest.raises(ValueError, match="integers"):
        accuracy.parse_int_list("a,b")


def test_bad_settings_raise():
    args = _args(accuracy.configure, ["--workers", "10", "--inputs", "4", "--stragglers", "0,7"])
    with pytest.raises(ValueError, match=r"--stragglers must lie in \[0, N - K\] = \[0, 6\]"):
        accuracy.settings(args)
    args = _args(accuracy.configure, ["--workers", "3", "--inputs", "4"])
    with pytest.raises(ValueError, match="--workers"):
        accuracy.settings(args)


def test_cli_reports_bad_input(capsys):
    """`nercc bench accuracy` / `nercc tune` with impossible settings: exit code 2 and one line naming the problem."""
    args = _args(bench_cli.configure, ["accuracy", "--workers", "12", "--inputs", "4", "--stragglers", "9"])
    assert bench_cli.main(args) == 2
    assert "--stragglers must lie in [0, N - K] = [0, 8], got [9]" in capsys.readouterr().err
    args = _args(tune.configure, ["--model", "no_such_model"])
    assert tune.main(args) == 2
    assert "unknown model 'no_such_model'" in capsys.readouterr().err


def test_byzantine_benchmark_robust_decoding(lenet, tmp_path, capsys):
    """`nercc bench accuracy --byzantine 1`: robust decoding undoes a huge wrong answer and costs nothing clean."""
    args = _args(accuracy.configure, ["--model", MODEL, "-N", "12", "-K", "4", "-S", "0", "-T", "30", "--no-tune",
                                      "--quiet", "--byzantine", "1", "--attack", "large,dirichlet",
                                      "--out", str(tmp_path)])
    assert accuracy.main(args) == 0
    assert "byz+robust" in capsys.readouterr().out
    report = json.loads((tmp_path / "byzantine_lenet5_N12_K4_A1.json").read_text())
    for name in ("bacc", "nercc"):
        row = report["byzantine"]["results"]["0"][name]
        assert row["clean_robust"] <= 1.05 * row["clean"]
        large = row["attacks"]["large"]
        assert large["caught_fraction"] == 1.0
        assert large["robust"] <= 2.0 * row["straggling"] < large["plain"]
        # the detector's statistic: a 1e6-scale answer is always the most suspect, far above any honest batch
        assert large["located_fraction"] == 1.0
        assert large["score_p5_p50"][0] > 100 * row["clean_score_p50_p95_p99"][2]
        assert 0.0 <= row["attacks"]["dirichlet"]["located_fraction"] <= 1.0


def test_accuracy_systematic_columns(lenet, tmp_path):
    """`nercc bench accuracy --systematic` at N = 12, K = 4: systematic next to plain, S = 0 exact."""
    args = _args(accuracy.configure, ["--model", MODEL, "--workers", "12", "--inputs", "4", "--stragglers", "0,2",
                                      "--trials", "60", "--seed", "0", "--no-tune", "--quiet", "--systematic",
                                      "--out", str(tmp_path)])
    assert accuracy.main(args) == 0
    data = json.loads((tmp_path / "accuracy_lenet5_N12_K4.json").read_text())
    assert data["command"].endswith("--systematic") and set(data["lams_systematic"]) == {"0", "2"}
    zero, two = data["results"]["0"], data["results"]["2"]
    for name in ("nercc-sys", "bacc-sys"):
        # no straggler: every prediction is its own worker's answer, bit-exact
        assert zero[name]["mse_mean"] == 0.0 and zero[name]["relacc_mean"] == pytest.approx(1.0, abs=0)
        assert zero[name]["recovered_mse"] is None and zero[name]["exact_batches"] == 1.0
        assert 0 < two[name]["recovered_fraction"] < 0.5 and two[name]["recovered_mse"] > 0
    # recovered inputs are only those whose systematic worker straggled: 2 of 12 stragglers hit ~1/6 of them
    assert two["nercc-sys"]["recovered_fraction"] == pytest.approx(2 / 12, abs=0.06)
    assert two["nercc-sys"]["mse_mean"] < two["nercc"]["mse_mean"]  # most inputs exact
    rows = list(csv.DictReader((tmp_path / "accuracy_lenet5_N12_K4.csv").open()))
    assert {r["scheme"] for r in rows} == {"BACC", "NeRCC-0", "NeRCC", "BACC-sys", "NeRCC-sys"}


def test_geometry_bench_compares_geometries_with_plain(lenet, tmp_path, capsys):
    from nercc.bench import systematic

    args = _args(systematic.configure, ["--model", MODEL, "--sizes", "4x12", "--stragglers", "2", "--trials", "30",
                                        "--geometries", "near,chebyshev1,chebyshev2", "--quiet", "--out",
                                        str(tmp_path)])
    assert systematic.main(args) == 0
    data = json.loads((tmp_path / "geometry_lenet5.json").read_text())
    variants = data["results"]["4x12"]["variants"]
    assert set(variants) == {"plain", "near", "chebyshev1", "chebyshev2"}
    for name, row in variants.items():
        r = row["by_s"]["2"]
        assert 0 <= r["mse"] < 0.5 and r["relacc"] > 0.9 and r["lam_dec"] >= 0
        if name == "plain":
            assert r["recovered_fraction"] == 1.0  # a plain code estimates every input
        else:
            assert 0 < r["recovered_fraction"] < 0.4 and r["recovered_mse"] is not None
    assert "rec/plain" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        _args(systematic.configure, ["--trials", "x"])
    assert systematic.main(_args(systematic.configure, ["--sizes", "12x4", "--out", str(tmp_path)])) == 2
