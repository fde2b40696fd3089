"""Admission control: a search is taken only if it can be answered in time; the rest are refused at once.

The rule, in seconds rather than a count so that one default suits a laptop CPU and a GPU alike: a query is
admitted while the queries already admitted would keep the encoder busy for at most `max_wait_s`, at the
rate it has been measured at (seconds of forward pass per query, per kind, averaged over recent batches).
A query refused gets `503` with `Retry-After` (the seconds until the backlog is back under the bound) from
the app, at once: it never waits, never holds a thread, never reaches the encoder. With nothing admitted a
query is always taken, however slow the encoder.
"""

import math
import threading

KINDS = ("text", "image")
SMOOTHING = 0.5  # the weight of the newest batch in the per-query time: follows a change of load within ~3 batches


class Admission:
    def __init__(self, max_wait_s: float):
        if not 0 < max_wait_s < float("inf"):
            raise ValueError(f"max_wait_s={max_wait_s!r}: give a positive number of seconds")
        self.max_wait_s = max_wait_s
        self.admitted = dict.fromkeys(KINDS, 0)  # admitted and not yet answered
        self.seconds_per_query = dict.fromkeys(KINDS, 0.0)  # 0 until the first batch of that kind is measured
        self._lock = threading.Lock()

    def backlog_s(self) -> float:
        """Seconds of encoding the admitted queries need, at the measured rate."""
        return sum(self.admitted[kind] * self.seconds_per_query[kind] for kind in KINDS)

    def enter(self, kind: str) -> int | None:
        """Admit a query of `kind` (None), or refuse it: the seconds a client should wait before retrying."""
        with self._lock:
            backlog = self.backlog_s()
            if any(self.admitted.values()) and backlog + self.seconds_per_query[kind] > self.max_wait_s:
                return max(1, math.ceil(backlog + self.seconds_per_query[kind] - self.max_wait_s))
            self.admitted[kind] += 1
            return None

    def leave(self, kind: str) -> None:
        with self._lock:
            self.admitted[kind] -= 1

    def observe(self, kind: str, size: int, seconds: float) -> None:
        """One forward pass of `size` queries took `seconds` (`Retriever.on_batch`)."""
        with self._lock:
            per_query, before = seconds / max(size, 1), self.seconds_per_query[kind]
            self.seconds_per_query[kind] = per_query if before == 0 else before + SMOOTHING * (per_query - before)
