"""A coded batch's setting, resolved once: scheme, K, N, lam_enc and lam_dec per number of answers.

The encoder, the client and the benchmarks all ask the same question, "which lams for this (K, N) and this
many answers?", and all answer it here: :func:`profile_lams` reads a tuning profile (a dict already loaded
by :mod:`nercc.profiles`; no I/O here) and :class:`CodedSetting` holds the answer with the schemes that
encode and decode under it (one matrix cache: each scheme's own).
"""

from __future__ import annotations

import threading
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from nercc.coding._validation import check_lam
from nercc.coding.registry import make_scheme, scheme_info
from nercc.coding.schemes import CodingScheme

__all__ = ["FALLBACK_LAMS", "CodedSetting", "profile_entry", "profile_lams", "entry_scheme"]

#: Used when a model has no profile at all: mild smoothing that never did worse than lam = 0 in our runs.
FALLBACK_LAMS = (1e-6, 1e-6)


#: The scheme of a profile entry without a "scheme" field (every entry written before systematic codes)
PLAIN_SCHEME = "nercc"


def _empty_profile() -> dict:
    return {"default": None, "entries": []}


def entry_scheme(entry: Mapping) -> str:
    """The scheme a profile entry was tuned for: its "scheme" field, "nercc" when absent (older entries)."""
    return str(entry.get("scheme") or PLAIN_SCHEME)


def _scheme_entries(profile: Mapping, scheme: str) -> list:
    return [e for e in profile.get("entries") or () if entry_scheme(e) == scheme]


def profile_entry(profile: Mapping, n_inputs: int, n_workers: int, n_stragglers: int,
                  scheme: str = PLAIN_SCHEME) -> Optional[dict]:
    """The profile's entry for exactly (K, N, S) tuned for ``scheme``, or None."""
    for entry in _scheme_entries(profile, scheme):
        if (entry["n_inputs"], entry["n_workers"], entry["n_stragglers"]) == (n_inputs, n_workers, n_stragglers):
            return entry
    return None


def _closest_entry(profile: Mapping, n_inputs: int, n_workers: int, n_stragglers: int,
                   scheme: str = PLAIN_SCHEME) -> Optional[dict]:
    """Exact (K, N) entries first, the straggler count closest to S; then entries with the same N/K.

    Only entries tuned for ``scheme``; a scheme with no entry at all (a systematic scheme not tuned for this
    model) uses plain NeRCC's entries, the nearest tuned values there are.
    """
    entries = _scheme_entries(profile, scheme)
    if not entries and scheme != PLAIN_SCHEME:
        entries = _scheme_entries(profile, PLAIN_SCHEME)
    exact = [e for e in entries if e["n_inputs"] == n_inputs and e["n_workers"] == n_workers]
    if exact:
        return min(exact, key=lambda e: abs(e["n_stragglers"] - n_stragglers))
    redundancy = n_workers / n_inputs
    straggling = n_stragglers / n_workers
    similar = [e for e in entries if abs(e["n_workers"] / e["n_inputs"] - redundancy) < 1e-9]
    if not similar:
        return None
    return min(similar, key=lambda e: abs(e["n_stragglers"] / e["n_workers"] - straggling))


def profile_lams(
    profile: Mapping,
    n_inputs: int,
    n_workers: int,
    n_stragglers: Optional[int] = None,
    n_arrived: Optional[int] = None,
    scheme: str = PLAIN_SCHEME,
) -> Tuple[float, float]:
    """(lam_enc, lam_dec) for a serving setting of ``scheme``, from a loaded tuning profile.

    Among the entries tuned for ``scheme`` (entries without a "scheme" field are plain NeRCC's; a scheme
    with no entries uses plain NeRCC's), exact (K, N) entries win, the one whose straggler count is closest to ``n_stragglers`` (or to
    ``N - n_arrived``); then entries with the same redundancy N/K; then the profile default; then
    ``FALLBACK_LAMS``. With ``n_arrived`` and a ``lam_dec_by_arrived`` table, lam_dec comes from it.
    """
    if n_stragglers is None and n_arrived is not None:
        n_stragglers = n_workers - n_arrived
    best = _closest_entry(profile, n_inputs, n_workers, 0 if n_stragglers is None else n_stragglers, scheme)
    if best is None:
        default = profile.get("default")
        if default:
            return float(default["lam_enc"]), float(default["lam_dec"])
        return FALLBACK_LAMS
    lam_dec = float(best["lam_dec"])
    by_arrived = best.get("lam_dec_by_arrived") or {}
    if n_arrived is not None and str(n_arrived) in by_arrived:
        lam_dec = float(by_arrived[str(n_arrived)])
    return float(best["lam_enc"]), lam_dec


class CodedSetting:
    """One coded-batch setting: ``scheme`` with K inputs on N workers and its smoothing parameters.

    ``lam_enc`` is fixed for the setting (the master encodes once); ``lam_dec_for(m)`` is the decoding
    parameter when m answers arrived: the given ``lam_dec`` if any, else the profile's choice for m answers.
    :meth:`from_profile` resolves both from a tuning profile once; schemes without smoothing (BACC) ignore
    the lams (reported as 0).
    """

    def __init__(
        self,
        scheme: str,
        n_inputs: int,
        n_workers: int,
        lam_enc: float = 0.0,
        lam_dec: float = 0.0,
        lam_dec_by_arrived: Optional[Mapping[int, float]] = None,
        profile: Optional[Mapping] = None,
        n_stragglers: Optional[int] = None,
        **cache,
    ):
        info = scheme_info(scheme, coded_only=True)
        self.scheme = info.name
        self.smoothing = info.smoothing
        self.lam_enc = check_lam("lam_enc", lam_enc) if self.smoothing else 0.0
        self.lam_dec = check_lam("lam_dec", lam_dec) if self.smoothing else 0.0
        self.lam_dec_by_arrived: Dict[int, float] = {
            int(m): check_lam("lam_dec", v) for m, v in (lam_dec_by_arrived or {}).items()
        }
        self._profile = profile  # where lam_dec for an unlisted answer count comes from
        self.n_stragglers = n_stragglers
        self._cache = cache
        self._coders: Dict[float, CodingScheme] = {}
        self._lock = threading.Lock()
        self.n_inputs, self.n_workers = n_inputs, n_workers
        self.encoder = self.coder()  # validates K and N
        self.n_inputs, self.n_workers = self.encoder.n_inputs, self.encoder.n_workers

    @classmethod
    def from_profile(
        cls,
        profile: Optional[Mapping],
        scheme: str,
        n_inputs: int,
        n_workers: int,
        n_stragglers: Optional[int] = None,
        lam_enc: Optional[float] = None,
        lam_dec: Optional[float] = None,
        **cache,
    ) -> CodedSetting:
        """The setting for S = ``n_stragglers`` expected stragglers; given lams override the profile's."""
        profile = profile if profile is not None else _empty_profile()
        prof_enc, prof_dec = profile_lams(profile, n_inputs, n_workers, n_stragglers,
                                          scheme=scheme_info(scheme, coded_only=True).name)
        return cls(
            scheme, n_inputs, n_workers,
            lam_enc=prof_enc if lam_enc is None else lam_enc,
            lam_dec=prof_dec if lam_dec is None else lam_dec,
            profile=None if lam_dec is not None else profile,
            n_stragglers=n_stragglers,
            **cache,
        )

    def lam_dec_for(self, n_arrived: Optional[int]) -> float:
        """lam_dec when ``n_arrived`` answers came (None: the setting's own lam_dec)."""
        if not self.smoothing or n_arrived is None:
            return self.lam_dec
        n_arrived = int(n_arrived)
        if n_arrived not in self.lam_dec_by_arrived:
            if self._profile is None:
                return self.lam_dec
            lam = profile_lams(self._profile, self.n_inputs, self.n_workers, n_arrived=n_arrived, scheme=self.scheme)[1]
            self.lam_dec_by_arrived[n_arrived] = lam
        return self.lam_dec_by_arrived[n_arrived]

    def coder(self, lam_dec: Optional[float] = None) -> CodingScheme:
        """The coding scheme at ``lam_dec`` (default: the setting's), one instance (and cache) per lam_dec."""
        lam_dec = self.lam_dec if lam_dec is None else float(lam_dec)
        coder = self._coders.get(lam_dec)
        if coder is None:
            with self._lock:
                coder = self._coders.get(lam_dec)
                if coder is None:
                    coder = make_scheme(self.scheme, self.n_inputs, self.n_workers, self.lam_enc, lam_dec, **self._cache)
                    self._coders[lam_dec] = coder
        return coder

    def encode(self, x) -> np.ndarray:
        """K inputs -> N coded inputs (float32 stays float32)."""
        return self.encoder.encode(x)

    def decode(self, y, arrived: Sequence[int]) -> np.ndarray:
        """Answers of the ``arrived`` workers (ascending) -> K approximate outputs, at lam_dec for |arrived|."""
        return self.coder(self.lam_dec_for(len(arrived))).decode(y, arrived)

    def encoding_matrix(self) -> np.ndarray:
        return self.encoder.encoding_matrix()

    def decoding_matrix(self, arrived: Sequence[int]) -> np.ndarray:
        """The (K, |arrived|) decoding matrix at lam_dec for that many answers."""
        return self.coder(self.lam_dec_for(len(arrived))).decoding_matrix(arrived)

    def evaluate(self, f, x_batches, straggler_sets, f_x=None, paired: bool = False) -> np.ndarray:
        """Per-trial MSE on f (:func:`nercc.coding.tuning.evaluate`), each arrived set at its own lam_dec."""
        from nercc.coding.tuning import evaluate

        return evaluate(self, f, x_batches, straggler_sets, f_x=f_x, paired=paired)

    def __repr__(self) -> str:
        lams = f", lam_enc={self.lam_enc!r}, lam_dec={self.lam_dec!r}" if self.smoothing else ""
        return f"CodedSetting({self.scheme!r}, n_inputs={self.n_inputs}, n_workers={self.n_workers}{lams})"
