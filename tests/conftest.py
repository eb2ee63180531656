"""Shared pytest setup. Fixtures that start servers live in the test modules that need them."""

import sys

from nercc.paths import REPO_ROOT

# export/, bench/ and loadtest/ are importable from the checkout, as the `nercc` CLI does it.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
