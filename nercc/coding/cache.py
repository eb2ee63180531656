"""A byte-bounded LRU cache: the one cache of coding matrices and schemes (no I/O, threads only).

Values are anything with an ``nbytes`` that stays fixed while cached: numpy arrays, or coding schemes whose
matrices are built before they go in (:attr:`nercc.coding.CodingScheme.nbytes`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable

__all__ = ["ByteBoundedLRU"]


class ByteBoundedLRU:
    """A thread-safe LRU cache bounded by the total ``nbytes`` of its values.

    A value larger than the whole bound is returned but not kept. ``get_or_build(key, build)`` builds outside
    the lock so that other keys stay served while a large matrix is made.
    """

    def __init__(self, max_bytes: int):
        if isinstance(max_bytes, bool) or int(max_bytes) != max_bytes or max_bytes < 0:
            raise ValueError(f"max_bytes must be an integer >= 0, got {max_bytes!r}")
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self.bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key):
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key, value: Any) -> Any:
        size = int(value.nbytes)
        if size > self.max_bytes:
            return value
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= int(old.nbytes)
            self._items[key] = value
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self.bytes -= int(evicted.nbytes)
        return value

    def get_or_build(self, key, build: Callable[[], Any]) -> Any:
        value = self.get(key)
        if value is None:
            value = self.put(key, build())
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.bytes = 0
