"""The coding core: NeRCC (smoothing splines) and BACC (Berrut) encode/decode, plain and systematic, and tuning.

Pure numpy + scipy, no I/O; serving, the client and the benchmarks import it, never the other way.

>>> from nercc.coding import NeRCC
>>> scheme = NeRCC(n_inputs=4, n_workers=12, lam_enc=1e-5, lam_dec=1e-5)
>>> scheme.encoding_matrix().shape, scheme.decoding_matrix([0, 2, 3, 5, 8, 11]).shape
((12, 4), (4, 6))
"""

from nercc.coding.berrut import berrut_matrix
from nercc.coding.cache import ByteBoundedLRU
from nercc.coding.points import SYSTEMATIC_GEOMETRIES, chebyshev_first, chebyshev_second, systematic_points
from nercc.coding.registry import (
    BASELINE_SCHEMES,
    CODED_SCHEMES,
    DEFAULT_SCHEME,
    SCHEME_ORDER,
    SCHEMES,
    SYSTEMATIC_SCHEMES,
    SchemeInfo,
    make_scheme,
    scheme_info,
)
from nercc.coding.robust import RobustDecodeResult, detect_outliers, robust_decode
from nercc.coding.schemes import BACC, CodingScheme, NeRCC, SystematicBACC, SystematicNeRCC
from nercc.coding.setting import FALLBACK_LAMS, CodedSetting, profile_entry, profile_lams
from nercc.coding.splines import smoothing_spline_matrix
from nercc.coding.tuning import (
    TuneResult,
    coded_outputs,
    default_lam_grid,
    evaluate,
    mean_squared_error,
    random_straggler_sets,
    refinement_grid,
    tune,
)

__all__ = [
    "ByteBoundedLRU",
    "NeRCC",
    "BACC",
    "SystematicNeRCC",
    "SystematicBACC",
    "CodingScheme",
    "make_scheme",
    "SCHEMES",
    "SCHEME_ORDER",
    "CODED_SCHEMES",
    "BASELINE_SCHEMES",
    "SYSTEMATIC_SCHEMES",
    "DEFAULT_SCHEME",
    "SchemeInfo",
    "scheme_info",
    "CodedSetting",
    "profile_lams",
    "profile_entry",
    "FALLBACK_LAMS",
    "chebyshev_first",
    "chebyshev_second",
    "systematic_points",
    "SYSTEMATIC_GEOMETRIES",
    "smoothing_spline_matrix",
    "berrut_matrix",
    "robust_decode",
    "detect_outliers",
    "RobustDecodeResult",
    "tune",
    "TuneResult",
    "evaluate",
    "coded_outputs",
    "refinement_grid",
    "random_straggler_sets",
    "mean_squared_error",
    "default_lam_grid",
]
