"""Wait policies of a coded batch: when the client stops waiting and decodes (pure; no I/O, no transport).

One parser shared by the client (``nercc.client.core``) and the simulator (``nercc.simulate``), so both accept
the same strings with the same rule. It lives outside ``nercc.client`` because importing that package loads
the Triton transports, which the simulator does not need.
"""

from __future__ import annotations

from typing import Optional, Tuple

#: Fewest answers a coded decode accepts: an interpolant through one point is a constant.
MIN_CODED_ANSWERS = 2


def parse_policy(policy: str, n_workers: int) -> Tuple[str, Optional[int]]:
    """``"deadline"`` | ``"all"`` | ``"first:M"`` → (kind, M); M must satisfy 2 <= M <= n_workers."""
    if not isinstance(policy, str):
        raise ValueError(f"policy must be a string, got {policy!r}")
    text = policy.strip().lower()
    if text in ("deadline", "all"):
        return text, None
    if text.startswith("first:"):
        try:
            m = int(text.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"policy {policy!r}: M in 'first:M' must be an integer") from None
        if not MIN_CODED_ANSWERS <= m <= n_workers:
            raise ValueError(
                f"policy {policy!r}: M must be between {MIN_CODED_ANSWERS} and n_workers={n_workers}"
            )
        return "first", m
    raise ValueError(f"unknown policy {policy!r}; use 'deadline', 'first:M' or 'all'")
