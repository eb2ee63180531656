"""Wait policies of a coded batch: when the client stops waiting and decodes (pure; no I/O, no transport).

One parser shared by the client (``nercc.client.core``) and the simulator (``nercc.simulate``), so both accept
the same strings with the same rule. It lives outside ``nercc.client`` because importing that package loads
the Triton transports, which the simulator does not need.

Policies, times counted from the call (the same clock as the deadline):

``deadline``
    wait until every request answered or the deadline passed.
``all``
    wait for every request, up to the hard timeout.
``first:M``
    decode as soon as M answers are in; never wait past the deadline.
``first:M@T``
    patient first:M: decode as soon as *every* request answered, or at T ms once M answers are in, or (fewer
    than M by T) as soon as the M-th comes; never past the deadline. Without stragglers every answer is in
    before T and the batch decodes from all N (the most accurate decode); with a few stragglers it decodes at
    T from the N - s that came; only when more than N - M straggle does it wait longer. T trades a little p50
    for accuracy at no cost in the tail beyond T.
``exact:M@T`` (systematic schemes only, ``nercc.coding`` schemes with ``systematic = True``)
    exact when on time: decode as soon as every one of the K systematic answers is in (no regression: each
    input's own answer, exact); otherwise, once T ms have passed *and* at least M answers (any workers) are
    in, decode, the regression fitted on every arrived answer filling in the inputs whose own worker is late;
    never past the deadline (fewer than M by then: wait for the M-th, the batch is late). ``exact:M`` is
    ``exact:M@0``: recover as soon as M answers are in.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

#: Fewest answers a coded decode accepts: an interpolant through one point is a constant.
MIN_CODED_ANSWERS = 2


class WaitPolicy(NamedTuple):
    """A parsed policy: ``kind`` is ``deadline`` | ``all`` | ``first`` | ``exact``; ``m`` the M of ``first:M`` /
    ``exact:M`` (else None); ``patience_ms`` the T of ``first:M@T`` / ``exact:M@T`` (None: decode at the M-th
    answer)."""

    kind: str
    m: Optional[int] = None
    patience_ms: Optional[float] = None


#: Policy kinds that take ``:M`` and ``@T``.
COUNTED_KINDS = ("first", "exact")


def parse_policy(policy: str, n_workers: int) -> WaitPolicy:
    """``"deadline"`` | ``"all"`` | ``"first:M"`` | ``"first:M@T"`` | ``"exact:M"`` | ``"exact:M@T"`` → :class:`WaitPolicy`.

    M must satisfy 2 <= M <= n_workers; T (ms) must be a finite number >= 0.
    """
    if not isinstance(policy, str):
        raise ValueError(f"policy must be a string, got {policy!r}")
    text = policy.strip().lower()
    if text in ("deadline", "all"):
        return WaitPolicy(text)
    kind, colon, body = text.partition(":")
    if colon and kind in COUNTED_KINDS:
        m_text, at, t_text = body.partition("@")
        try:
            m = int(m_text)
        except ValueError:
            raise ValueError(f"policy {policy!r}: M in '{kind}:M' must be an integer") from None
        if not MIN_CODED_ANSWERS <= m <= n_workers:
            raise ValueError(
                f"policy {policy!r}: M must be between {MIN_CODED_ANSWERS} and n_workers={n_workers}"
            )
        if not at:
            return WaitPolicy(kind, m, 0.0 if kind == "exact" else None)
        try:
            patience_ms = float(t_text.removesuffix("ms"))
        except ValueError:
            raise ValueError(f"policy {policy!r}: T in '{kind}:M@T' must be a number of ms") from None
        if not (patience_ms >= 0 and math.isfinite(patience_ms)):
            raise ValueError(f"policy {policy!r}: T in '{kind}:M@T' must be a finite number of ms >= 0")
        return WaitPolicy(kind, m, patience_ms)
    raise ValueError(
        f"unknown policy {policy!r}; use 'deadline', 'first:M', 'first:M@T', 'exact:M@T' (systematic schemes) or 'all'"
    )
