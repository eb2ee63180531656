"""The serving measurement (`python -m nercc.serving.measure`): master + 12 workers, slow, run on demand."""

import pytest

pytest.importorskip("tritonclient.grpc")


@pytest.mark.slow
def test_measure_master_and_twelve_workers():
    from nercc.serving.measure import measure, table

    results = measure("lenet5", n_workers=12, n_inputs=4, n_requests=200)
    print(table(results))
    assert results["start_to_ready_s"] < 60
    assert sum(results["rss_bytes"].values()) > 13 * 20 * 2**20  # 13 servers were really up
    for stats in results["latency_ms"].values():
        assert 0 < stats["median"] <= stats["p99"]
