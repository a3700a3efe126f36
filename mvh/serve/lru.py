"""The one in-memory cache of the web app: least recently used first out, bounded by a total weight.

Weights are 1 per entry unless given (tiles weigh their JPEG bytes). Used for DeepZoom generators (their
slide is closed on eviction), tile JPEGs and the query images of recent searches.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def _one(_: object) -> int:
    return 1


class LruCache(Generic[K, V]):
    """A thread-safe least-recently-used cache whose values weigh at most `limit` together."""

    def __init__(
        self, limit: int, weight: Callable[[V], int] = _one, on_evict: Callable[[V], None] | None = None
    ) -> None:
        self.limit = limit
        self.total = 0
        self._weight = weight
        self._on_evict = on_evict
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K) -> V | None:
        """The cached value (marked as recently used) or None."""
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> V:
        """Keep `value` (evicting least recently used ones beyond the limit); return the cached value.

        A key already cached keeps its first value; a value heavier than the limit is returned, not kept.
        """
        weight = self._weight(value)
        evicted = []
        with self._lock:
            if key in self._items:
                return self._items[key]
            if weight > self.limit:
                return value
            self._items[key] = value
            self.total += weight
            while self.total > self.limit:
                old = self._items.popitem(last=False)[1]
                self.total -= self._weight(old)
                evicted.append(old)
        if self._on_evict is not None:
            for old in evicted:
                self._on_evict(old)
        return value
