"""Straggler profiles: named, seeded per-request delay distributions injected at a worker.

A profile is a short string, the same on the command line, in ``LocalCluster(straggler=...)`` and in
the worker's Triton config::

    none                                   no delay (the default)
    shifted-exp:shift_ms=S,scale_ms=B      delay = S + Exp(mean B)
    bimodal:p=P,slow_ms=D                  with probability P the request is delayed by D ms, else 0
    bimodal:p=P,factor=F                   with probability P the request takes F times its measured
                                           compute time (delay = (F - 1) * compute), else no delay
    pareto:scale_ms=X,alpha=A              delay ~ Pareto type I: X * U^(-1/A) >= X ms, heavy tail for small A
    slow-workers:count=C,slow_ms=D         workers 0 .. C-1 are always slow: every request they serve is
                                           delayed by D ms; the other workers never are (a bad machine, not luck)

Pure Python + numpy, no I/O: the Triton worker model, the benchmarks and the tests share it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Sequence, Union

import numpy as np

# kind -> (required fields, optional fields); bimodal needs exactly one of slow_ms / factor.
_FIELDS: Dict[str, tuple] = {
    "none": ((), ()),
    "shifted-exp": (("shift_ms", "scale_ms"), ()),
    "bimodal": (("p",), ("slow_ms", "factor")),
    "pareto": (("scale_ms", "alpha"), ()),
    "slow-workers": (("count", "slow_ms"), ()),
}
KINDS = tuple(_FIELDS)


@dataclass(frozen=True)
class StragglerProfile:
    """A parsed straggler profile; ``str(profile)`` gives back a canonical profile string."""

    kind: str
    params: Dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        if self.kind == "none":
            return "none"
        body = ",".join(f"{key}={_fmt(value)}" for key, value in self.params.items())
        return f"{self.kind}:{body}"

    @property
    def is_none(self) -> bool:
        return self.kind == "none" or (self.kind == "bimodal" and self.params["p"] == 0.0) or (
            self.kind == "slow-workers" and (self.params["count"] == 0 or self.params["slow_ms"] == 0))

    def sample_delay_ms(
        self, rng: np.random.Generator, compute_ms: Union[float, np.ndarray] = 0.0, size: int | None = None,
        worker_index: int = 0,
    ) -> Union[float, np.ndarray]:
        """Draw the extra delay in ms for one request (``size=None``) or ``size`` requests.

        ``compute_ms`` is the measured compute time of the request(s); only ``bimodal:...,factor=F`` uses it.
        ``worker_index`` is the serving worker's index; only ``slow-workers`` uses it.
        """
        shape = () if size is None else (int(size),)
        p = self.params
        if self.kind == "none":
            delay = np.zeros(shape)
        elif self.kind == "shifted-exp":
            delay = p["shift_ms"] + rng.exponential(p["scale_ms"], size=shape) if p["scale_ms"] > 0 else (
                np.full(shape, p["shift_ms"])
            )
        elif self.kind == "bimodal":
            slow = rng.random(size=shape) < p["p"]
            if "slow_ms" in p:
                extra = np.full(shape, p["slow_ms"])
            else:
                extra = (p["factor"] - 1.0) * np.broadcast_to(np.asarray(compute_ms, dtype=float), shape)
            delay = np.where(slow, extra, 0.0)
        elif self.kind == "pareto":
            # numpy's pareto() is Lomax (Pareto II, support >= 0); +1 and scale give Pareto I with minimum X.
            delay = p["scale_ms"] * (1.0 + rng.pareto(p["alpha"], size=shape))
        elif self.kind == "slow-workers":
            delay = np.full(shape, p["slow_ms"] if int(worker_index) < p["count"] else 0.0)
        else:  # unreachable: parse_straggler only builds known kinds
            raise ValueError(f"unknown straggler kind {self.kind!r}")
        return float(delay) if size is None else np.asarray(delay, dtype=float)

    def mean_delay_ms(self, compute_ms: float = 0.0, worker_index: int = 0) -> float:
        """Expected extra delay in ms (inf for a Pareto tail with alpha <= 1); slow-workers: of that worker."""
        p = self.params
        if self.kind == "none":
            return 0.0
        if self.kind == "slow-workers":
            return p["slow_ms"] if int(worker_index) < p["count"] else 0.0
        if self.kind == "shifted-exp":
            return p["shift_ms"] + p["scale_ms"]
        if self.kind == "bimodal":
            extra = p["slow_ms"] if "slow_ms" in p else (p["factor"] - 1.0) * compute_ms
            return p["p"] * extra
        alpha = p["alpha"]
        return math.inf if alpha <= 1 else p["scale_ms"] * alpha / (alpha - 1.0)


def _fmt(value: float) -> str:
    return f"{value:g}"


def parse_straggler(text: Union[str, StragglerProfile, None]) -> StragglerProfile:
    """Parse a profile string (see the module docstring); bad strings raise ValueError naming the field."""
    if isinstance(text, StragglerProfile):
        return text
    if text is None:
        return StragglerProfile("none")
    if not isinstance(text, str):
        raise ValueError(f"straggler profile must be a string, got {type(text).__name__}")
    spec = text.strip()
    kind, sep, body = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in _FIELDS:
        raise ValueError(f"unknown straggler profile kind {kind!r} in {text!r}; expected one of {', '.join(KINDS)}")
    required, optional = _FIELDS[kind]
    params: Dict[str, float] = {}
    if body.strip():
        for item in body.split(","):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or not key:
                raise ValueError(f"straggler profile {text!r}: expected key=value, got {item.strip()!r}")
            if key not in required and key not in optional:
                allowed = ", ".join(required + optional) or "no fields"
                raise ValueError(f"straggler profile {text!r}: unknown field {key!r} for {kind} (allowed: {allowed})")
            if key in params:
                raise ValueError(f"straggler profile {text!r}: field {key!r} given twice")
            try:
                number = float(value)
            except ValueError:
                raise ValueError(f"straggler profile {text!r}: field {key!r} must be a number, got {value.strip()!r}") from None
            if not math.isfinite(number):
                raise ValueError(f"straggler profile {text!r}: field {key!r} must be finite, got {value.strip()!r}")
            params[key] = number
    elif sep and kind != "none":
        raise ValueError(f"straggler profile {text!r}: missing fields {', '.join(required)}")
    for key in required:
        if key not in params:
            raise ValueError(f"straggler profile {text!r}: missing field {key!r}")
    _check_ranges(kind, params, text)
    # canonical order: required fields first, then the optional one used
    ordered = {key: params[key] for key in required + optional if key in params}
    return StragglerProfile(kind, ordered)


def _check_ranges(kind: str, params: Dict[str, float], text: str) -> None:
    def need(key: str, ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"straggler profile {text!r}: field {key!r} must be {what}, got {params[key]:g}")

    if kind == "shifted-exp":
        need("shift_ms", params["shift_ms"] >= 0, ">= 0")
        need("scale_ms", params["scale_ms"] >= 0, ">= 0")
    elif kind == "bimodal":
        need("p", 0.0 <= params["p"] <= 1.0, "in [0, 1]")
        has_ms, has_factor = "slow_ms" in params, "factor" in params
        if has_ms == has_factor:
            raise ValueError(f"straggler profile {text!r}: bimodal needs exactly one of 'slow_ms' or 'factor'")
        if has_ms:
            need("slow_ms", params["slow_ms"] >= 0, ">= 0")
        else:
            need("factor", params["factor"] >= 1, ">= 1")
    elif kind == "pareto":
        need("scale_ms", params["scale_ms"] > 0, "> 0")
        need("alpha", params["alpha"] > 0, "> 0")
    elif kind == "slow-workers":
        need("count", params["count"] >= 0 and float(params["count"]).is_integer(), "a whole number >= 0")
        need("slow_ms", params["slow_ms"] >= 0, ">= 0")


class StragglerSampler:
    """The delay stream of one worker: profile + seed + worker index give a reproducible sequence."""

    def __init__(self, profile: Union[str, StragglerProfile, None], seed: int = 0, worker_index: int = 0):
        self.profile = parse_straggler(profile)
        self.seed = int(seed)
        self.worker_index = int(worker_index)
        # Distinct, independent streams per worker from one cluster seed.
        self._rng = np.random.default_rng([self.seed, self.worker_index])

    def next_delay_ms(self, compute_ms: float = 0.0) -> float:
        if self.profile.kind == "none":
            return 0.0
        return float(self.profile.sample_delay_ms(self._rng, compute_ms, worker_index=self.worker_index))


def sample_delays_ms(
    profile: Union[str, StragglerProfile], n: int, seed: int = 0, worker_indices: Sequence[int] = (0,),
    compute_ms: float = 0.0,
) -> np.ndarray:
    """(len(worker_indices), n) delays: the first n requests each listed worker would see (for simulations)."""
    rows = []
    for index in worker_indices:
        sampler = StragglerSampler(profile, seed, index)
        rows.append([sampler.next_delay_ms(compute_ms) for _ in range(int(n))])
    return np.asarray(rows, dtype=float)
