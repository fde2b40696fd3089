"""Sharing one model and one machine between concurrent queries: dynamic batching and a decode-memory budget.

`Batcher` turns the calls of many threads (a web server's workers) into batched calls of one function, the
way embedding servers (text-embeddings-inference, Triton) batch concurrent requests: when the worker is free
it takes what is waiting, with no timer when nothing else is, and forms a batch whose padded size (its
largest item's size × its count) fits a budget, grouping items of similar size (texts of similar length pad
little), the oldest item always first. A query whose caller has gone (`Caller.leave`: the HTTP client
disconnected) before its batch is formed is dropped, never run. `PixelBudget` bounds the pixels being
decoded at once, in arrival order, so concurrent uploads of huge photos cannot add up to gigabytes and a
large photo waits only for what came before it. Only `python -m faclip serve` uses them; the CLI and the
Python API call the model directly.
"""

import contextlib
import contextvars
import itertools
import logging
import threading
import time
from collections import deque
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from typing import Callable, Generic, Sequence, TypeVar

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


class Caller:
    """Whoever a query is run for (a server's HTTP client). `leave()` when it has gone: its queries still
    waiting for a batch are dropped, and any it submits later raise CancelledError at once."""

    def __init__(self):
        self.gone = False
        self._futures: list[Future] = []
        self._lock = threading.Lock()

    def leave(self) -> None:
        with self._lock:
            self.gone = True
            for future in self._futures:
                future.cancel()  # only a query not yet in a batch is cancelled; a running one finishes

    def _watch(self, future: Future) -> None:
        with self._lock:
            if self.gone:
                future.cancel()
            self._futures.append(future)


_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("faclip_caller", default=None)


@contextlib.contextmanager
def on_behalf_of(caller: Caller):
    """Within this block, this thread's `Batcher.submit` calls run for `caller` (and are dropped if it leaves)."""
    token = _caller.set(caller)
    try:
        yield caller
    finally:
        _caller.reset(token)


@dataclass(eq=False)
class _Waiting:
    item: object
    future: Future
    order: int
    size: int | None = None  # computed by the worker, once


class Batcher(Generic[Item, Result]):
    """`submit(item)` from any thread returns `run(batch)[i]` for its item, with `batch` the items run together.

    `run(items) -> results` (one result per item, in order) runs on one worker thread, so it is never called
    twice at once. When the worker is free it takes what is waiting (topped up for at most `max_wait_ms`,
    0 by default: a lone item runs at once): the oldest item, then the others closest to it in `size(item)`
    while the batch's padded size, len(batch) × its largest size, stays within `budget` and its count within
    `max_batch`. An item larger than the budget runs alone. An exception from `run` reaches every caller of
    that batch.
    """

    def __init__(self, run: Callable[[list[Item]], Sequence[Result]], *, max_batch: int = 32,
                 budget: int | None = None, size: Callable[[Item], int] | None = None, max_wait_ms: float = 0.0,
                 name: str = "batcher"):
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch={max_batch!r}: give a whole number of at least 1")
        if budget is not None and budget < 1:
            raise ValueError(f"budget={budget!r}: give a positive size, or None for no budget")
        if not 0 <= max_wait_ms < float("inf"):
            raise ValueError(f"max_wait_ms={max_wait_ms!r}: give a number of milliseconds >= 0")
        self.run, self.max_batch, self.budget, self.max_wait = run, max_batch, budget, max_wait_ms / 1000
        self.size = size or (lambda item: 1)
        self._waiting: list[_Waiting] = []  # in arrival order
        self._changed = threading.Condition()
        self._order = itertools.count()
        self._worker = threading.Thread(target=self._loop, name=name, daemon=True)
        self._worker.start()

    @property
    def waiting(self) -> int:
        """Items submitted and not yet taken into a batch (dropped ones included until the worker sees them)."""
        with self._changed:
            return len(self._waiting)

    def submit(self, item: Item) -> Result:
        """Run `item` in the next batch that takes it; blocks until its result is there (or raises the batch's
        exception, or CancelledError if its caller left first)."""
        caller = _caller.get()
        if caller is not None and caller.gone:
            raise CancelledError()
        future: Future = Future()
        if caller is not None:
            caller._watch(future)
        with self._changed:
            self._waiting.append(_Waiting(item, future, next(self._order)))
            self._changed.notify_all()
        return future.result()

    def _next_batch(self) -> list[_Waiting]:
        with self._changed:
            self._changed.wait_for(lambda: self._waiting)  # idle until a query arrives
            if self.max_wait:
                deadline = time.monotonic() + self.max_wait
                self._changed.wait_for(lambda: len(self._waiting) >= self.max_batch or time.monotonic() >= deadline,
                                       timeout=self.max_wait)
            self._waiting = [w for w in self._waiting if not w.future.cancelled()]  # callers gone: dropped
            candidates = list(self._waiting)
        for waiting in candidates:  # outside the lock: callers keep submitting meanwhile
            if waiting.size is None:
                waiting.size = max(1, int(self.size(waiting.item)))
        batch = self._choose(candidates)
        with self._changed:
            taken = set(map(id, batch))
            self._waiting = [w for w in self._waiting if id(w) not in taken]
        return [w for w in batch if w.future.set_running_or_notify_cancel()]  # a caller may have left just now

    def _choose(self, candidates: list[_Waiting]) -> list[_Waiting]:
        if not candidates:
            return []
        oldest = candidates[0]
        batch, largest = [oldest], oldest.size
        for waiting in sorted(candidates[1:], key=lambda w: (abs(w.size - oldest.size), w.order)):
            if len(batch) == self.max_batch:
                break
            if self.budget is None or max(largest, waiting.size) * (len(batch) + 1) <= self.budget:
                batch.append(waiting)
                largest = max(largest, waiting.size)
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if not batch:
                continue
            try:
                results = self.run([waiting.item for waiting in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
            except BaseException as err:  # handed to every caller of the batch; the worker lives on
                for waiting in batch:
                    waiting.future.set_exception(err)
                continue
            for waiting, result in zip(batch, results):
                waiting.future.set_result(result)


class PixelBudget:
    """A counting semaphore over pixels, first come first served: `with budget.hold(n):` waits until every
    earlier request holds its pixels and `n` more fit under `limit`.

    So a large photo waits only for what arrived before it: smaller ones that arrive later queue behind it
    instead of overtaking it forever. One request larger than the whole budget still runs, alone (it waits
    until nothing else holds pixels), so it is never refused here; the image guards
    (`faclip.files.image_size_problem`) cap a single image. `peak` is the most pixels ever held at once;
    `waits` counts the requests that had to wait.
    """

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"a pixel budget must be positive, got {limit}")
        self.limit, self.in_use, self.peak, self.waits = limit, 0, 0, 0
        self._queue: deque[object] = deque()  # one ticket per waiting request, in arrival order
        self._free = threading.Condition()

    def hold(self, pixels: int) -> "_Held":
        return _Held(self, max(0, int(pixels)))

    def _acquire(self, pixels: int) -> None:
        ticket = object()
        with self._free:
            self._queue.append(ticket)
            if not self._turn(ticket, pixels):
                self.waits += 1
                self._free.wait_for(lambda: self._turn(ticket, pixels))
            self._queue.popleft()
            self.in_use += pixels
            self.peak = max(self.peak, self.in_use)
            self._free.notify_all()  # the next in line may fit too

    def _turn(self, ticket: object, pixels: int) -> bool:
        return self._queue[0] is ticket and (self.in_use == 0 or self.in_use + pixels <= self.limit)

    def _release(self, pixels: int) -> None:
        with self._free:
            self.in_use -= pixels
            self._free.notify_all()


class _Held:
    def __init__(self, budget: PixelBudget, pixels: int):
        self.budget, self.pixels = budget, pixels

    def __enter__(self):
        self.budget._acquire(self.pixels)
        return self

    def __exit__(self, *exc):
        self.budget._release(self.pixels)
        return False
