"""Size limits and the byte-bounded cache (nercc.serving.limits): pure functions, no servers."""

import numpy as np
import pytest

from nercc.serving.limits import (
    MAX_WORKERS,
    ByteBoundedLRU,
    check_encode_request,
    check_finite_output,
    max_inputs_per_request,
)


def test_float32_growth_is_counted_before_preprocessing():
    # 1000 MNIST images: 784 kB raw, but 3.1 MB as float32: a 2 MB limit refuses it before any work
    with pytest.raises(ValueError, match="preprocessed input .* over the limit max_request_bytes = 2000000"):
        check_encode_request(1000, 1000, (1, 28, 28), 2_000_000, raw_bytes=784_000)
    with pytest.raises(ValueError, match="coded output"):
        check_encode_request(4, 3000, (1, 28, 28), 2_000_000, raw_bytes=4 * 784)
    with pytest.raises(ValueError, match="raw input"):
        check_encode_request(4, 12, (1, 28, 28), 2_000_000, raw_bytes=3_000_000)
    check_encode_request(4, 12, (1, 28, 28), 2_000_000, raw_bytes=4 * 784)


def test_k_and_n_bounds():
    with pytest.raises(ValueError, match="N >= K"):
        check_encode_request(13, 12, (10,), 2**30)
    with pytest.raises(ValueError, match="K >= 2"):
        check_encode_request(1, 12, (10,), 2**30)
    with pytest.raises(ValueError, match=f"<= {MAX_WORKERS}"):
        check_encode_request(4, MAX_WORKERS + 1, (10,), 2**40)


def test_max_inputs_per_request_matches_the_checks():
    """The K bound the master's configs declare (Triton's max_batch_size) refuses nothing the checks accept."""
    item = (1, 28, 28)  # 3136 bytes float32
    assert max_inputs_per_request(item, 256 * 2**20) == MAX_WORKERS
    k = max_inputs_per_request(item, 3136 * 100 + 5)
    assert k == 100
    check_encode_request(k, k, item, 3136 * 100 + 5)  # the largest K allowed passes the stub's checks too
    with pytest.raises(ValueError, match="preprocessed input"):
        check_encode_request(k + 1, k + 1, item, 3136 * 100 + 5)
    assert max_inputs_per_request((3, 224, 224), 256 * 2**20) == 445
    assert max_inputs_per_request(item, 10) == 1  # below one item: the stub names the limit


def test_finite_output_check_names_the_problem():
    check_finite_output("CODED", np.ones(3, np.float32))
    with pytest.raises(ValueError, match="CODED has 2 non-finite"):
        check_finite_output("CODED", np.array([1.0, np.inf, np.nan], np.float32))


def test_byte_bounded_lru_evicts_by_bytes_and_skips_oversized():
    cache = ByteBoundedLRU(max_bytes=3000)
    for i in range(5):
        cache.put(i, np.zeros(1000, np.uint8))
    assert len(cache) == 3 and cache.bytes == 3000 and cache.get(0) is None and cache.get(4) is not None
    cache.get(2)  # touch: 2 becomes most recent, 3 is the oldest
    cache.put(9, np.zeros(1000, np.uint8))
    assert cache.get(3) is None and cache.get(2) is not None
    big = cache.put("big", np.zeros(5000, np.uint8))
    assert big.nbytes == 5000 and cache.get("big") is None and cache.bytes <= 3000
    built = []
    value = cache.get_or_build("x", lambda: built.append(1) or np.ones(10))
    assert cache.get_or_build("x", lambda: built.append(1) or np.ones(10)) is value and built == [1]
    with pytest.raises(ValueError, match="max_bytes"):
        ByteBoundedLRU(-1)
