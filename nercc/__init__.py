"""nercc: straggler-resilient prediction serving on Triton with approximate coded computing.

The coding core (`nercc.coding`) is pure numpy/scipy; serving, export and benchmarks live in
sub-packages and top-level folders that import it, never the other way round.
"""

__version__ = "0.1.0"
