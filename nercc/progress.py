"""The package's one progress bar: tqdm that stays quiet in logs.

On a terminal a bar redraws as tqdm likes (every 0.1 s at most). When its stream is not a terminal (``make demo >
log 2>&1``, CI, a Triton stub's log) every redraw is one more line in the file, so it redraws at most every
:data:`NON_TTY_INTERVAL_S` seconds (and once at the end). Every tqdm in nercc goes through :func:`progress_bar`;
``tests/test_progress.py`` holds it to that.
"""

from __future__ import annotations

import sys

#: Seconds between redraws when the bar's stream is not a terminal.
NON_TTY_INTERVAL_S = 5.0


def is_terminal(stream) -> bool:
    """Whether ``stream`` (default: stderr, where tqdm writes) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(iterable=None, **kwargs):
    """``tqdm(iterable, **kwargs)``; off a terminal, ``mininterval`` defaults to :data:`NON_TTY_INTERVAL_S` (an
    explicit ``mininterval`` wins) and ``maxinterval`` is raised to match, so tqdm's monitor thread does not
    redraw sooner."""
    from tqdm.auto import tqdm

    if not is_terminal(kwargs.get("file")):
        kwargs.setdefault("mininterval", NON_TTY_INTERVAL_S)
        kwargs["maxinterval"] = max(float(kwargs.get("maxinterval", 10.0)), float(kwargs["mininterval"]))
    return tqdm(iterable, **kwargs)
