"""Start one master tritonserver (preprocess, encoder, and the one-hop encode model) on this host: `nercc master --model M`.

See :mod:`nercc.serving.node` for the options shared with ``nercc worker`` and docs/deploy.md for the recipe.
"""

from nercc.serving.node import configure_master as configure
from nercc.serving.node import run


def main(args) -> int:
    return run("master", args)


__all__ = ["configure", "main"]
