"""Start one worker tritonserver (the model's ONNX) on this host: `nercc worker --model M --index i`.

See :mod:`nercc.serving.node` for the options shared with ``nercc master`` and docs/deploy.md for the recipe.
"""

from nercc.serving.node import configure_worker as configure
from nercc.serving.node import run


def main(args) -> int:
    return run("worker", args)


__all__ = ["configure", "main"]
