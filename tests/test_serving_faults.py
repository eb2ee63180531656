"""Fault strings and the injector (nercc.serving.faults), and a real worker answering NaN / wrong on purpose."""

import numpy as np
import pytest

from nercc.serving.faults import FaultInjector, parse_fault


def test_parse_and_apply():
    assert str(parse_fault("none")) == "none" and str(parse_fault("large:p=0.5,seed=3")) == "large:p=0.5,seed=3"
    probs = np.full((2, 10), 0.1, np.float32)
    assert np.isnan(FaultInjector("nan").apply(probs)).all()
    assert np.isinf(FaultInjector("inf").apply(probs)).all()
    big = FaultInjector("large").apply(probs)
    assert np.isfinite(big).all() and np.abs(big).max() > 1e20
    wrong = FaultInjector("wrong").apply(probs)
    assert wrong.shape == probs.shape and np.allclose(wrong.sum(-1), 1, atol=1e-5) and not np.allclose(wrong, probs)
    assert FaultInjector("shape").apply(probs).shape == (2, 11)
    assert FaultInjector("none").apply(probs) is probs
    half = FaultInjector("nan:p=0.5")
    hit = sum(np.isnan(half.apply(probs)).all() for _ in range(200))
    assert 60 < hit < 140


@pytest.mark.parametrize("text, match", [("boom", "kind"), ("nan:p=2", "p must"), ("nan:q=1", "option"),
                                         ("nan:p=x", "options")])
def test_bad_fault_strings(text, match):
    with pytest.raises(ValueError, match=match):
        parse_fault(text)
