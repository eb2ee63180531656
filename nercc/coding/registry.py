"""The one list of schemes: name -> what it is. Adding a scheme touches this file (and its class, if coded).

Coded schemes (``coder`` set) are linear codes of :mod:`nercc.coding.schemes`; the serving baselines
(``coder`` None) send the uncoded inputs and differ only in how the client places and waits for requests.
Tables, command lines, the client and the encoder read scheme names from here, never from string literals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Type

from nercc.coding.schemes import BACC, CodingScheme, NeRCC, SystematicBACC, SystematicNeRCC

__all__ = [
    "SchemeInfo",
    "SCHEMES",
    "SCHEME_ORDER",
    "CODED_SCHEMES",
    "BASELINE_SCHEMES",
    "DEFAULT_SCHEME",
    "UNCODED",
    "REPLICATION",
    "HEDGED",
    "BACC_NAME",
    "NERCC_NAME",
    "BACC_SYS_NAME",
    "NERCC_SYS_NAME",
    "NERCC0_NAME",
    "SYSTEMATIC_SCHEMES",
    "scheme_info",
    "make_scheme",
]


@dataclass(frozen=True)
class SchemeInfo:
    name: str  #: the key in requests, profiles, result files and on the command line
    label: str  #: the name in tables and plots
    coder: Optional[Type[CodingScheme]]  #: the coding class; None for the serving baselines (no coding)
    summary: str  #: one line for --help and docs

    @property
    def coded(self) -> bool:
        return self.coder is not None

    @property
    def smoothing(self) -> bool:
        """Whether the scheme has the smoothing parameters lam_enc and lam_dec (NeRCC and its subclasses)."""
        return self.coder is not None and issubclass(self.coder, NeRCC)

    @property
    def systematic(self) -> bool:
        """Whether K of the N workers get the inputs unchanged (exact answers when they arrive)."""
        return self.coder is not None and bool(self.coder.systematic)


#: Display order: the baselines, then the coded schemes (plain, then systematic; NeRCC after BACC in each).
SCHEMES: Dict[str, SchemeInfo] = {
    info.name: info
    for info in (
        SchemeInfo("uncoded", "uncoded", None, "input k to one worker; wait for all K answers"),
        SchemeInfo("replication", "replication", None, "input k to N // K workers; the first copy of each wins"),
        SchemeInfo("hedged", "hedged", None,
                   "uncoded, plus a second copy of a late input to an idle worker (The Tail at Scale)"),
        SchemeInfo("bacc", "BACC", BACC, "Berrut approximate coded computing (rational interpolation)"),
        SchemeInfo("nercc", "NeRCC", NeRCC, "nested regression coded computing (smoothing splines)"),
        SchemeInfo("bacc-sys", "BACC-sys", SystematicBACC,
                   "systematic BACC: K workers get the inputs unchanged, N - K Berrut parity inputs"),
        SchemeInfo("nercc-sys", "NeRCC-sys", SystematicNeRCC,
                   "systematic NeRCC: K workers get the inputs unchanged, N - K smoothing-spline parity inputs"),
    )
}
SCHEME_ORDER: Tuple[str, ...] = tuple(SCHEMES)
#: The names, for code that treats one scheme specially (placement, hedging, smoothing)
UNCODED, REPLICATION, HEDGED, BACC_NAME, NERCC_NAME, BACC_SYS_NAME, NERCC_SYS_NAME = SCHEME_ORDER
#: NeRCC with lam_enc = lam_dec = 0 (the paper's model-agnostic variant): a column of the accuracy tables
#: (``nercc bench accuracy``) and the simulator's fallback, not a scheme a client can ask for.
NERCC0_NAME = NERCC_NAME + "0"
CODED_SCHEMES: Tuple[str, ...] = tuple(name for name, info in SCHEMES.items() if info.coded)
BASELINE_SCHEMES: Tuple[str, ...] = tuple(name for name, info in SCHEMES.items() if not info.coded)
#: The systematic coded schemes (a subset of CODED_SCHEMES)
SYSTEMATIC_SCHEMES: Tuple[str, ...] = tuple(name for name, info in SCHEMES.items() if info.systematic)
DEFAULT_SCHEME = NeRCC.name


def scheme_info(name: str, coded_only: bool = False) -> SchemeInfo:
    """The registry entry for ``name`` (case-insensitive); a ValueError naming the choices otherwise."""
    choices = CODED_SCHEMES if coded_only else SCHEME_ORDER
    key = name.lower() if isinstance(name, str) else name
    if key not in choices:
        raise ValueError(f"scheme must be one of {', '.join(choices)}; got {name!r}")
    return SCHEMES[key]


def make_scheme(
    name: str, n_inputs: int, n_workers: int, lam_enc: float = 0.0, lam_dec: float = 0.0, **cache
) -> CodingScheme:
    """The coding scheme ``name`` for K inputs and N workers; lams apply to schemes with smoothing only.

    ``cache`` holds keyword arguments of the class: ``cache_size``, ``cache_bytes``, and for the systematic
    schemes ``geometry`` (:func:`nercc.coding.points.systematic_points`).
    """
    info = scheme_info(name, coded_only=True)
    if info.smoothing:
        return info.coder(n_inputs, n_workers, lam_enc, lam_dec, **cache)
    return info.coder(n_inputs, n_workers, **cache)
