"""Sharing one model and one machine between concurrent queries: dynamic batching and a decode-memory budget.

`Batcher` turns the calls of many threads (a web server's workers) into batched calls of one function, the
way embedding servers (text-embeddings-inference, Triton) batch concurrent requests: a worker thread takes
every query waiting, waits up to `max_wait_ms` for more (at most `max_batch` in all), runs them together and
hands each caller its own result. `PixelBudget` bounds the pixels being decoded at once, so concurrent
uploads of huge photos cannot add up to gigabytes. Only `python -m faclip serve` uses them; the CLI and the
Python API call the model directly.
"""

import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import Callable, Generic, Sequence, TypeVar

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    """`submit(item)` from any thread returns `run(batch)[i]` for its item, with `batch` the items waiting together.

    `run(items) -> results` (one result per item, in order) runs on one worker thread, so it is never called
    twice at once. A batch is everything queued when the worker is free, topped up for at most `max_wait_ms`,
    never more than `max_batch` items. An exception from `run` reaches every caller of that batch.
    """

    def __init__(self, run: Callable[[list[Item]], Sequence[Result]], *, max_batch: int = 32,
                 max_wait_ms: float = 2.0, name: str = "batcher"):
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch={max_batch!r}: give a whole number of at least 1")
        if not 0 <= max_wait_ms < float("inf"):
            raise ValueError(f"max_wait_ms={max_wait_ms!r}: give a number of milliseconds >= 0")
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait_ms / 1000
        self._queue: queue.SimpleQueue[tuple[Item, Future]] = queue.SimpleQueue()
        self._worker = threading.Thread(target=self._loop, name=name, daemon=True)
        self._worker.start()

    def submit(self, item: Item) -> Result:
        """Run `item` in the next batch; blocks until its result is there (or raises the batch's exception)."""
        future: Future = Future()
        self._queue.put((item, future))
        return future.result()

    def _next_batch(self) -> list[tuple[Item, Future]]:
        batch = [self._queue.get()]  # idle until a query arrives
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())  # everything already waiting, without a wait
                continue
            except queue.Empty:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(self._queue.get(timeout=left))
            except queue.Empty:
                break
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            try:
                results = self.run([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
            except BaseException as err:  # handed to every caller of the batch; the worker lives on
                for _, future in batch:
                    future.set_exception(err)
                continue
            for (_, future), result in zip(batch, results):
                future.set_result(result)


class PixelBudget:
    """A counting semaphore over pixels: `with budget.hold(n):` waits until `n` more pixels fit under `limit`.

    One request larger than the whole budget still runs, alone (it waits until nothing else holds pixels),
    so it is never refused here; the image guards (`faclip.files.image_size_problem`) cap a single image.
    `peak` is the most pixels ever held at once.
    """

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"a pixel budget must be positive, got {limit}")
        self.limit, self.in_use, self.peak, self.waits = limit, 0, 0, 0
        self._free = threading.Condition()

    def hold(self, pixels: int) -> "_Held":
        return _Held(self, max(0, int(pixels)))

    def _acquire(self, pixels: int) -> None:
        with self._free:
            if not self._fits(pixels):
                self.waits += 1
                self._free.wait_for(lambda: self._fits(pixels))
            self.in_use += pixels
            self.peak = max(self.peak, self.in_use)

    def _fits(self, pixels: int) -> bool:
        return self.in_use == 0 or self.in_use + pixels <= self.limit

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
