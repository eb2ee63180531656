"""The coding-cost benchmark runs end to end on a tiny shape (the real run is `python -m nercc.bench.coding_cost`)."""

import argparse
import json

import pytest

from nercc.bench import coding_cost


def test_cost_benchmark_runs_and_reports(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    coding_cost.configure(parser)
    out = tmp_path / "cost.json"
    argv = "--sizes 4x12,6x30 --dims 10 --repeats 1 --build-repeats 1 --min-seconds 0 --quiet --json".split()
    args = parser.parse_args(argv + [str(out)])
    assert coding_cost.main(args) == 0
    text = capsys.readouterr().out
    assert "floor" in text and "worst ratio to the matmul floor" in text
    rows = json.loads(out.read_text())
    assert {(r["scheme"], r["K"], r["N"], r["arrived"]) for r in rows} == {
        ("nercc", 4, 12, 10),
        ("bacc", 4, 12, 10),
        ("nercc", 6, 30, 24),
        ("bacc", 6, 30, 24),
    }
    assert all(r["encode_ms"] > 0 and r["floor_decode_ms"] > 0 for r in rows)


@pytest.mark.parametrize("bad", [["--sizes", "12x4"], ["--sizes", "ax3"], ["--dims", "0"]])
def test_cost_benchmark_rejects_bad_arguments(bad):
    parser = argparse.ArgumentParser()
    coding_cost.configure(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(bad)
