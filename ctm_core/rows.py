"""Rows computed in aligned blocks on a few threads, so that a row's value ignores its batch.

The served runtimes (`ctm_core.runtime`) compute every call this way (docs/PERFORMANCE.md):

- Rows are computed in blocks of at most BLOCK_ROWS, whose activations stay in cache (twice as
  fast at n = 100,000 as one pass over 50 MB arrays), each block with single-threaded PyTorch ops.
  Blocks are shared out to `ROWS.threads` threads as they free up, rather than splitting every op
  over OpenMP threads, which wait for each other at every op and stall whenever a core is busy
  elsewhere (the HTTP client, another process).
- Every call is padded to a multiple of ROW_ALIGN rows, and every block is too. BLAS routines round
  a row differently when a matrix has 1–3 rows (or up to 11, threaded), or when a matrix-vector
  product's row count is not a multiple of 4; with aligned blocks a row's value depends on that
  row alone, not on the rows beside it or the block it falls in, so a request gives the same
  samples alone or batched with others, and on any number of threads. `ctm_core.runtime.batch_invariant`
  checks this for each model; the service batches only models that pass.
"""

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch

ROW_ALIGN = 16
BLOCK_ROWS = 2048
# Fewer rows run in the calling thread as one block: sharing them out costs more than it saves
# (with oneDNN, 1,008 rows take 0.61 ms on one thread and 0.70–0.74 ms shared by two, which wake
# each other; docs/PERFORMANCE.md).
PARALLEL_MIN_ROWS = 2048


def aligned(rows: int) -> int:
    """`rows` rounded up to a multiple of ROW_ALIGN."""
    return -(-rows // ROW_ALIGN) * ROW_ALIGN


class RowThreads:
    """Runs `block(start, stop)` over aligned blocks of rows on `threads` threads, every PyTorch op
    in them single-threaded; threads take the next block as they free up."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads = 0
        self._executor: ThreadPoolExecutor | None = None

    @property
    def threads(self) -> int:
        """The threads a large call uses (default: PyTorch's thread count where first asked)."""
        if not self._threads:
            self.configure(torch.get_num_threads())
        return self._threads

    def configure(self, threads: int) -> None:
        """Use `threads` threads from now on (the service: the CPUs one job may use)."""
        with self._lock:
            if threads == self._threads:
                return
            previous, self._executor = self._executor, None
            self._threads = max(1, threads)
            if self._threads > 1:
                self._executor = ThreadPoolExecutor(
                    self._threads,
                    thread_name_prefix="ctm-rows",
                    initializer=_single_threaded_thread,
                )
        if previous is not None:
            previous.shutdown(wait=False)

    def run(self, block: Callable[[int, int], None], rows: int) -> None:
        """Cover rows [0, rows) (a multiple of ROW_ALIGN) with calls to `block`."""
        threads, executor = self.threads, self._executor
        if executor is None or rows < PARALLEL_MIN_ROWS:
            with single_threaded_ops():
                for start in range(0, rows, BLOCK_ROWS):
                    block(start, min(start + BLOCK_ROWS, rows))
            return
        size = min(BLOCK_ROWS, aligned(-(-rows // threads)))
        starts = iter(range(0, rows, size))  # shared: each next() is atomic under the GIL

        def take_blocks() -> None:
            for start in starts:
                block(start, min(start + size, rows))

        # The calling thread takes blocks too when its ops are single-threaded (the service's are):
        # one thread fewer to wake.
        helpers = threads - 1 if torch.get_num_threads() == 1 else threads
        futures = [executor.submit(take_blocks) for _ in range(helpers)]
        if helpers < threads:
            take_blocks()
        for future in futures:
            future.result()


ROWS = RowThreads()


def _single_threaded_thread() -> None:
    """Makes this thread's PyTorch ops single-threaded for good. PyTorch sets a thread's OpenMP
    threads lazily, at its first parallel op, to the count last set by any thread: asking for the
    count first runs that, so that a later `set_num_threads` elsewhere does not undo this one."""
    torch.get_num_threads()
    torch.set_num_threads(1)


@contextmanager
def single_threaded_ops() -> Iterator[None]:
    """This thread's PyTorch ops single-threaded meanwhile; a no-op where they already are (the
    service's). Blocks run in a caller with more intra-op threads would otherwise not be batch
    invariant: MKL's threaded matrix-vector product cuts a block's rows into one chunk per thread,
    and with 3, 5 or 6 threads the chunks are not multiples of 4 rows, so a row's rounding would
    depend on the block's row count."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_blocks(
    block: Callable[[torch.Tensor, torch.Tensor], None], x: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """`block(xb, out)` over x (n,) padded to an aligned row count, in aligned blocks on ROWS'
    threads (one pass on a GPU), writing each block's rows into `out`; returns out[:n]."""
    rows = x.shape[0]
    padded = aligned(rows)
    if padded != rows:
        x = torch.cat([x, x.new_zeros(padded - rows)])
    out = torch.empty_like(x)

    def run(start: int, stop: int) -> None:
        with torch.inference_mode():  # per thread: `run` may run in one of ROWS' threads
            block(x[start:stop], out[start:stop])

    if device.type == "cpu":
        ROWS.run(run, padded)
    else:  # one pass on a GPU
        run(0, padded)
    return out[:rows] if padded != rows else out


_scratch = threading.local()


def work_arrays(rows: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two (rows, width) float32 CPU arrays that this thread reuses for the MLP's activations,
    instead of a fresh one per layer."""
    pool: dict[int, tuple[torch.Tensor, torch.Tensor]] = _scratch.__dict__.setdefault("pool", {})
    arrays = pool.get(width)
    if arrays is None or arrays[0].shape[0] < rows:
        size = max(rows, BLOCK_ROWS)
        arrays = pool[width] = (torch.empty(size, width), torch.empty(size, width))
    return arrays[0][:rows], arrays[1][:rows]
