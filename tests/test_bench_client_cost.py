"""Smoke tests of `nercc bench client-cost` and `nercc bench transport-fanout`: tiny runs on real tritonservers
(N = 4, K = 2, a few batches); the committed figures come from the full runs (docs/client.md)."""

from __future__ import annotations

import argparse
import json

import pytest

pytest.importorskip("tritonclient.grpc.aio")
pytest.importorskip("gevent")

from nercc.bench import client_cost, transport_fanout  # noqa: E402


def _args(module, argv):
    parser = argparse.ArgumentParser()
    module.configure(parser)
    return parser.parse_args(argv)


def test_client_cost_smoke(tmp_path, capsys):
    out = tmp_path / "cost.json"
    rows = "uncoded,replication,hedged,bacc,nercc,nercc-local,nercc-sys,nercc-server,uncoded-server"
    args = _args(client_cost, ["--workers", "4", "--inputs", "2", "--batches", "6", "--round", "3", "--warmup", "1",
                               "--rows", rows, "--transports", "aio,gevent", "--policy", "all", "--save", str(out)])
    assert client_cost.main(args) == 0
    printed = capsys.readouterr().out
    assert "| replication |" in printed and "| nercc@gevent |" in printed and "targets" in printed
    record = json.loads(out.read_text())
    table = {r["row"]: r for r in record["rows"]}
    # the coded endpoint's rows (one gRPC request to <model>_coded) have no gevent twin
    assert list(table) == rows.split(",") + [f"{r}@gevent" for r in rows.split(",") if not r.endswith("-server")]
    assert record["crashed_servers"] == []
    assert sum(r["server_cpu_ms_per_batch"] for r in table.values()) > 0
    assert sum(r["client_cpu_ms_per_batch"] for r in table.values()) > 0
    assert table["replication"]["p50_vs_replication"] == 1.0
    for name, row in table.items():
        assert 0 < row["p50_ms"] <= row["p99_ms"], name
        # /proc counts in clock ticks (10 ms): a few batches of one row can read 0, never below
        assert row["server_cpu_ms_per_batch"] >= 0 and row["client_cpu_ms_per_batch"] >= 0, name
        assert row["cpu_ms_per_batch"] == pytest.approx(row["server_cpu_ms_per_batch"]
                                                        + row["client_cpu_ms_per_batch"])
    # requests per batch: uncoded K, replication (N // K) K, coded N; hedged K plus its second copies
    assert table["uncoded"]["requests_per_batch"] == 2 and table["replication"]["requests_per_batch"] == 4
    assert table["nercc"]["requests_per_batch"] == 4 and table["nercc-local"]["requests_per_batch"] == 4
    assert table["nercc-server"]["requests_per_batch"] == 4 and table["uncoded-server"]["requests_per_batch"] == 2
    assert 2 <= table["hedged"]["requests_per_batch"] <= 4
    # systematic: the K own requests always, the parity ones only when their rows came before the own answers
    assert 2 <= table["nercc-sys"]["requests_per_batch"] <= 4 and "| nercc-sys@gevent |" in printed


def test_client_cost_rejects_bad_settings():
    with pytest.raises(SystemExit, match="unknown transport"):
        client_cost.main(_args(client_cost, ["--transports", "aio,carrier-pigeon"]))
    with pytest.raises(SystemExit, match="unknown row"):
        client_cost.main(_args(client_cost, ["--rows", "nercc,lt"]))


def test_transport_fanout_smoke(capsys):
    args = _args(transport_fanout, ["--workers", "3", "--fanouts", "4", "--rounds", "1"])
    assert transport_fanout.main(args) == 0
    printed = capsys.readouterr().out
    for name in transport_fanout.TRANSPORTS:
        assert f"| {name} |" in printed
