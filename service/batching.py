"""Dynamic batching: jobs that wait together, and are compatible, run as one call.

No job waits on purpose. Jobs submitted in one turn of the event loop (the requests read together
from the network) are dispatched together at the end of that turn; jobs that arrive while every
slot is busy queue up. A dispatch takes the oldest waiting job with every later waiting job of the
same key (up to `max_rows` rows), as continuous batching in LitServe and Triton does without their
batching delay. A batch that `inline` calls small runs at once on the event loop's thread (the hop
to a pool thread and back would cost more than the work); any other batch takes a free slot of the
executor, or waits for one. A cancelled job (its request timed out or went away) that still waits
is dropped, never run.

The `Batcher` lives on one event loop and is not thread-safe; only `run` goes to the executor.
"""

import asyncio
import functools
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

J = TypeVar("J")
R = TypeVar("R")


@dataclass(frozen=True)
class _Waiting(Generic[J, R]):
    job: J
    future: "asyncio.Future[tuple[R, int]]"


class Batcher(Generic[J, R]):
    """Runs jobs with `run(jobs) -> results` on `executor`, at most `slots` batches at a time.

    `key(job)`: jobs with equal keys may share a batch; None: the job always runs alone.
    `rows(job)`: its size, so that a batch holds at most `max_rows` rows (a larger job runs alone).
    `inline(jobs)`: whether a batch is small enough to run on the event loop's thread.
    """

    def __init__(
        self,
        executor: Executor,
        run: Callable[[list[J]], Sequence[R]],
        *,
        slots: int,
        key: Callable[[J], Hashable | None],
        rows: Callable[[J], int],
        max_rows: int,
        inline: Callable[[list[J]], bool] = lambda jobs: False,
    ) -> None:
        self._executor = executor
        self._run = run
        self._slots = slots
        self._key = key
        self._rows = rows
        self.max_rows = max_rows
        self._inline = inline
        self._waiting: deque[_Waiting[J, R]] = deque()
        self._running = 0
        self._running_jobs = 0
        self._dispatch_due = False

    async def submit(self, job: J) -> tuple[R, int]:
        """The result of `job`, and the size of the batch it ran in."""
        future: asyncio.Future[tuple[R, int]] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(job, future))
        if not self._dispatch_due:  # the first job of this loop turn: dispatch once all have come
            self._dispatch_due = True
            asyncio.get_running_loop().call_soon(self._dispatch)
        return await future  # cancelling the caller cancels `future`: a waiting job is then dropped

    @property
    def idle(self) -> bool:
        """No batch running and no job waiting."""
        return self._running == 0 and not self._waiting

    @property
    def running_jobs(self) -> int:
        """Jobs in the batches the executor holds (started, or queued behind other work)."""
        return self._running_jobs

    @property
    def waiting(self) -> int:
        """Jobs queued for a slot (cancelled ones included until the next dispatch drops them)."""
        return len(self._waiting)

    def _dispatch(self) -> None:
        self._dispatch_due = False
        while batch := self._take_batch():
            jobs = [w.job for w in batch]
            if self._inline(jobs):
                try:
                    self._settle(batch, results=self._run(jobs))
                except Exception as exc:  # the jobs' error, not the loop's: theirs to raise
                    self._settle(batch, error=exc)
                continue
            if self._running >= self._slots:
                self._waiting.extendleft(reversed(batch))  # first again when a slot frees
                return
            try:
                done = asyncio.get_running_loop().run_in_executor(self._executor, self._run, jobs)
            except RuntimeError as exc:  # the executor was shut down
                self._settle(batch, error=exc)
                continue
            self._running += 1
            self._running_jobs += len(batch)
            done.add_done_callback(functools.partial(self._finish, batch))

    def _take_batch(self) -> list[_Waiting[J, R]]:
        """The oldest live waiting job and every later one of its key that fits; [] when none waits."""
        waiting = self._waiting
        while waiting and waiting[0].future.done():
            waiting.popleft()
        if not waiting:
            return []
        head = waiting.popleft()
        batch = [head]
        key = self._key(head.job)
        if key is None or not waiting:
            return batch
        rows = self._rows(head.job)
        kept: deque[_Waiting[J, R]] = deque()
        while waiting:
            other = waiting.popleft()
            if other.future.done():
                continue
            size = self._rows(other.job)
            if rows + size <= self.max_rows and self._key(other.job) == key:
                batch.append(other)
                rows += size
            else:
                kept.append(other)
        self._waiting = kept
        return batch

    def _finish(self, batch: list[_Waiting[J, R]], done: "asyncio.Future[Sequence[R]]") -> None:
        self._running -= 1
        self._running_jobs -= len(batch)
        if done.cancelled():
            for waiting in batch:
                waiting.future.cancel()
        elif (exc := done.exception()) is not None:
            self._settle(batch, error=exc)
        else:
            self._settle(batch, results=done.result())
        self._dispatch()

    @staticmethod
    def _settle(
        batch: list[_Waiting[J, R]], results: Sequence[R] = (), error: BaseException | None = None
    ) -> None:
        """Give each job of `batch` its result and the batch's size (or the batch's error)."""
        if error is not None:
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(error)
            return
        for waiting, result in zip(batch, results, strict=True):
            if not waiting.future.done():
                waiting.future.set_result((result, len(batch)))
