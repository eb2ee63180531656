"""Fault injection at a worker (for chaos tests and benchmarks; off by default): wrong answers on purpose.

A fault string, given per worker like the straggler profile (``LocalCluster(faults={3: "nan"})``, or the
server's environment ``NERCC_FAULT``), replaces the worker's honest output:

    none      honest answers (default)
    nan       every value NaN (a broken GPU kernel, an overflowed model)
    inf       every value +inf
    large     honest answer + 1e30-scale noise: finite, absurd (a wrong scale, a corrupted accumulator)
    wrong     a random probability vector: finite, in range, wrong (a bad model version, an adversary)
    shape     one class too many (a model exported for another data set)

Options after a colon: ``p=`` the fraction of requests affected (default 1), ``seed=``.
Examples: ``nan``, ``large:p=0.5``, ``wrong:p=1,seed=3``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("none", "nan", "inf", "large", "wrong", "shape")


@dataclass(frozen=True)
class Fault:
    kind: str = "none"
    p: float = 1.0
    seed: int = 0

    def __str__(self) -> str:
        if self.kind == "none":
            return "none"
        return f"{self.kind}:p={self.p:g},seed={self.seed}"


def parse_fault(text) -> Fault:
    """A :class:`Fault` from its string; ValueError naming the problem."""
    if isinstance(text, Fault):
        return text
    text = str(text or "none").strip().lower()
    kind, _, rest = text.partition(":")
    if kind not in KINDS:
        raise ValueError(f"fault kind must be one of {', '.join(KINDS)}, got {kind!r}")
    options = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in ("p", "seed"):
            raise ValueError(f"fault option must be p=<0..1> or seed=<int>, got {item!r}")
        options[key] = value
    try:
        p = float(options.get("p", 1.0))
        seed = int(options.get("seed", 0))
    except ValueError:
        raise ValueError(f"fault options p (a number in 0..1) and seed (an int), got {rest!r}") from None
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"fault option p must be in 0..1, got {p}")
    return Fault(kind, p, seed)


class FaultInjector:
    """Applies a fault to a worker's outputs, request by request (seeded per worker)."""

    def __init__(self, fault, worker_index: int = 0):
        self.fault = parse_fault(fault)
        self.active = self.fault.kind != "none" and self.fault.p > 0
        self._rng = np.random.default_rng([self.fault.seed, int(worker_index), 77])

    def apply(self, probs: np.ndarray) -> np.ndarray:
        if not self.active or self._rng.random() >= self.fault.p:
            return probs
        kind = self.fault.kind
        if kind == "nan":
            return np.full_like(probs, np.nan)
        if kind == "inf":
            return np.full_like(probs, np.inf)
        if kind == "large":
            return (probs + 1e30 * self._rng.standard_normal(probs.shape)).astype(probs.dtype)
        if kind == "wrong":
            return self._rng.dirichlet(np.ones(probs.shape[-1]), size=probs.shape[:-1]).astype(probs.dtype)
        if kind == "shape":
            return np.concatenate([probs, np.zeros(probs.shape[:-1] + (1,), probs.dtype)], axis=-1)
        return probs
