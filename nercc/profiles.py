"""Tuning profiles: the (lam_enc, lam_dec) chosen per (K, N, S) for a model, stored next to it.

``model_repository/<model>/tuning.json``::

    {"model": "lenet5",
     "default": {"lam_enc": 1e-4, "lam_dec": 1e-3},
     "entries": [{"n_inputs": 20, "n_workers": 100, "n_stragglers": 40,
                  "lam_enc": ..., "lam_dec": ...,
                  "lam_dec_by_arrived": {"60": ...},      # optional: lam_dec per |F|
                  "mse": ..., "command": "...", "created": "..."},
                 {"scheme": "nercc-sys", "n_inputs": 4, ...}]}   # "scheme": absent = "nercc"

Written by ``nercc tune``; read by the Triton encoder and the client. Plain JSON I/O; choosing an entry is
:func:`nercc.coding.profile_lams` (pure).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Optional, Tuple, Union

from nercc.coding.setting import (  # noqa: F401  (FALLBACK_LAMS: public here too)
    FALLBACK_LAMS,
    PLAIN_SCHEME,
    entry_scheme,
    profile_lams,
)

PathLike = Union[str, Path]


def profile_path(model_dir: PathLike) -> Path:
    return Path(model_dir) / "tuning.json"


def load_profile(model_dir: PathLike) -> dict:
    """The profile as a dict; an empty profile when the file does not exist."""
    path = profile_path(model_dir)
    if not path.exists():
        return {"model": Path(model_dir).name, "default": None, "entries": []}
    with open(path) as fh:
        profile = json.load(fh)
    if not isinstance(profile.get("entries"), list):
        raise ValueError(f"{path}: 'entries' must be a list")
    return profile


def save_entry(model_dir: PathLike, entry: dict, make_default: bool = False) -> Path:
    """Insert or replace the entry for (scheme, n_inputs, n_workers, n_stragglers); write atomically.

    ``entry["scheme"]`` names the scheme it was tuned for (absent: plain NeRCC). Only plain NeRCC entries
    become the profile default."""
    for key in ("n_inputs", "n_workers", "n_stragglers", "lam_enc", "lam_dec"):
        if key not in entry:
            raise ValueError(f"profile entry needs {key!r}")
    for key in ("lam_enc", "lam_dec"):
        if not float(entry[key]) >= 0:
            raise ValueError(f"profile entry {key} must be >= 0, got {entry[key]!r}")
    profile = load_profile(model_dir)
    def key(e):
        return (e["n_inputs"], e["n_workers"], e["n_stragglers"], entry_scheme(e) != PLAIN_SCHEME, entry_scheme(e))

    same = key(entry)
    profile["entries"] = [e for e in profile["entries"] if key(e) != same] + [entry]
    profile["entries"].sort(key=key)
    if make_default or (not profile.get("default") and entry_scheme(entry) == PLAIN_SCHEME):
        profile["default"] = {"lam_enc": entry["lam_enc"], "lam_dec": entry["lam_dec"]}
    path = profile_path(model_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tuning.", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(profile, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)
    return path


def lookup(
    model_dir: PathLike,
    n_inputs: int,
    n_workers: int,
    n_stragglers: Optional[int] = None,
    n_arrived: Optional[int] = None,
    scheme: str = PLAIN_SCHEME,
) -> Tuple[float, float]:
    """(lam_enc, lam_dec) for a serving setting from the model's profile: see :func:`nercc.coding.profile_lams`."""
    return profile_lams(load_profile(model_dir), n_inputs, n_workers, n_stragglers, n_arrived, scheme=scheme)
