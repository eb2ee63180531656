"""The chaos suite on real tritonservers (see tests/chaos/chaos.py for the harness and what is counted).

`make test` runs a short version (N = 6, K = 2: N/3 workers SIGKILLed, a worker answering NaN, one of two
masters SIGKILLed); `make test-chaos` runs every scenario at N = 12, K = 4, and prints the table; the network
scenario (a worker in its own namespace behind a tbf link, then blackholed) skips with the reason where
namespaces are not allowed.
Asserted for every scenario: no non-finite prediction ever, no call past the hard timeout (plus slack for
this 2-core box), no coded batch lost, no server crashed, no process or shared-memory region left behind.
"""

from __future__ import annotations

import pytest

pytest.importorskip("tritonclient.grpc.aio")

from nercc.models import load_model_info  # noqa: E402
from nercc.serving.cluster import ClusterError, find_tritonserver  # noqa: E402

from .chaos import NETNS_SCENARIO, check, format_table, netns_unavailable, run_scenario, scenarios  # noqa: E402

try:
    find_tritonserver()
    load_model_info("lenet5").onnx_path.exists() or pytest.skip("lenet5 not exported", allow_module_level=True)
except ClusterError as exc:  # pragma: no cover - a machine without the serve extra
    pytest.skip(str(exc), allow_module_level=True)

SHORT = ("kill N/3", "worker answers NaN", "kill 1 of 2 masters")


def _scenario(n_workers, prefix):
    return next(s for s in scenarios(n_workers) if s.name.startswith(prefix))


@pytest.mark.parametrize("prefix", SHORT)  # the short version runs in `make test` (about 35 s)
def test_chaos_short(prefix, capsys):
    outcome = run_scenario(_scenario(6, prefix), n_workers=6, n_inputs=2, duration_s=4.0, rate_hz=4.0,
                           log=lambda *a: None)
    with capsys.disabled():
        print("\n" + format_table([outcome]))
    assert check(outcome) == []
    for scheme, tally in outcome["tallies"].items():
        assert tally.batches >= 5, (scheme, tally.row())


@pytest.mark.chaos
def test_chaos_full(capsys):
    outcomes, problems = [], []
    for scenario in scenarios(12):
        if scenario.name == NETNS_SCENARIO:
            continue  # test_chaos_netns_link: it needs root and namespaces
        outcome = run_scenario(scenario, n_workers=12, n_inputs=4, duration_s=8.0, rate_hz=4.0)
        outcomes.append(outcome)
        problems += [f"{scenario.name}: {p}" for p in check(outcome)]
    with capsys.disabled():
        print("\n" + format_table(outcomes))
    assert problems == []


@pytest.mark.chaos
def test_chaos_netns_link(capsys):
    why = netns_unavailable()
    if why:
        pytest.skip(f"network namespaces unavailable: {why}")
    outcome = run_scenario(_scenario(12, NETNS_SCENARIO), n_workers=12, n_inputs=4, duration_s=8.0, rate_hz=4.0)
    with capsys.disabled():
        print("\n" + format_table([outcome]))
    assert check(outcome) == []
    for scheme in ("bacc", "nercc"):  # the coded schemes answered every batch from the reachable workers
        assert outcome["tallies"][scheme].batches >= 20, outcome["tallies"][scheme].row()
