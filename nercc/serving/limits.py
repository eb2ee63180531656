"""Size limits of the master, checked before any work is done, and a byte-bounded cache.

Used by the encoder backend (``python_backends/encoder``) and the client's local encoding. Every check is a
plain function raising ``ValueError`` with a message that names the limit, so servers and clients report the
same words. Why before preprocessing: a raw uint8 request grows 4x as float32 (more with resizing), and its
N coded copies grow N/K times more; checking the raw size alone let a 200 MiB request (under a 256 MiB limit)
take the master from 148 MiB to 4 GiB.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from nercc.coding.cache import ByteBoundedLRU  # noqa: F401  (the coding core's cache; used through here too)

#: More workers than this is a typo, not a cluster: refused before building an N x K matrix.
MAX_WORKERS = 4096
#: Default bound of the master's encoding-matrix cache (float32 matrices; K = N = 4096 is 64 MiB each).
DEFAULT_MATRIX_CACHE_BYTES = 256 * 2**20
_FLOAT32 = 4


def check_encode_request(n_inputs: int, n_workers: int, item_shape: Sequence[int], max_request_bytes: int,
                         raw_bytes: int | None = None) -> None:
    """Refuse an encode request that is malformed or would outgrow ``max_request_bytes`` at any step.

    ``item_shape``: the model's float32 input shape (one preprocessed input). ``raw_bytes``: size of the raw
    request as received (None when the input is already float32). Checked: 2 <= K <= N <= MAX_WORKERS, the
    raw size, the preprocessed float32 size K * item and the coded size N * item.
    """
    if n_inputs < 2:
        raise ValueError(f"the request needs K >= 2 inputs along the first axis, got K = {n_inputs}")
    if n_workers > MAX_WORKERS:
        raise ValueError(f"n_workers must be <= {MAX_WORKERS}, got {n_workers}")
    if n_workers < n_inputs:
        raise ValueError(f"n_workers = {n_workers} is smaller than the number of inputs K = {n_inputs} "
                         "(N >= K is needed)")
    item = _FLOAT32 * math.prod(int(d) for d in item_shape)
    steps = []
    if raw_bytes is not None:
        steps.append(("raw input", int(raw_bytes)))
    steps += [(f"preprocessed input (K = {n_inputs} x {item} bytes float32)", n_inputs * item),
              (f"coded output (N = {n_workers} x {item} bytes float32)", n_workers * item)]
    for what, size in steps:
        if size > max_request_bytes:
            raise ValueError(f"{what} would be {size} bytes, over the limit max_request_bytes = {max_request_bytes}")


def max_inputs_per_request(item_shape: Sequence[int], max_request_bytes: int) -> int:
    """The largest K any encode request can have: min(MAX_WORKERS, max_request_bytes // float32 item bytes).

    The master's models declare it as Triton's ``max_batch_size``, so that Triton refuses a larger request
    before our Python stub copies it into its shared-memory pool (which grows to fit and never shrinks: a
    200 MiB request left 400 MiB behind). K <= N <= MAX_WORKERS and K * item <= max_request_bytes are checked
    again in the stub with clearer words; this bound only moves the refusal in front of the copy. At least 1
    (a limit below one item still reaches the stub, which names it).
    """
    item = _FLOAT32 * math.prod(int(d) for d in item_shape)
    return max(1, min(MAX_WORKERS, int(max_request_bytes) // item))


def check_finite_output(name: str, values: np.ndarray) -> None:
    """A clear error instead of inf/NaN coded inputs (finite inputs near the float32 maximum overflow)."""
    if not np.isfinite(values).all():
        bad = int(np.count_nonzero(~np.isfinite(values)))
        raise ValueError(f"{name} has {bad} non-finite value(s) although the input was finite: the input is too "
                         "large in magnitude for float32 coding (values near 3e38 overflow)")
