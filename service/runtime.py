"""The served network's runtime: the CTM jump G(x, t, s) of a checkpoint, computed faster than eager.

Built once per loaded model from its weights (`Runtimes.get`); ctm_core's samplers run on it
unchanged, since it has the model's `jump(x, t, s)` and `denoise(x, t)`. Same math as
`CTMParametrization` around `CTMNetwork`, rearranged for serving (docs/PERFORMANCE.md):

- Every sampler step uses one (t, s) for all rows, so the time embeddings and their part of the
  first layer fold into one bias vector per (t, s), and the EDM scalings and the jump's mixing
  into three scalars: G = a·x + b + c·F, with F the MLP's output.
- Rows are computed in blocks of at most BLOCK_ROWS, whose activations stay in cache (twice as
  fast at n = 100,000 as one pass over 50 MB arrays), each block with single-threaded PyTorch ops.
  Blocks are shared out to `ROWS.threads` threads as they free up, rather than splitting every op
  over OpenMP threads, which wait for each other at every op and stall whenever a core is busy
  elsewhere (the HTTP client, another process; docs/PERFORMANCE.md).
- The hidden layers' matrix products go through oneDNN's linear (`torch.ops.mkldnn._linear_pointwise`,
  what `torch.compile` emits for Linear on CPU) where PyTorch has it: it uses this CPU's AVX-512,
  where MKL's `addmm` does not, and takes 0.43× the time at 1,000 rows (docs/PERFORMANCE.md).
- Every call is padded to a multiple of ROW_ALIGN rows, and every block is too. BLAS routines round
  a row differently when a matrix has 1–3 rows (or up to 11, threaded), or when a matrix-vector
  product's row count is not a multiple of 4; with aligned blocks a row's value depends on that
  row alone, not on the rows beside it or the block it falls in, so a request gives the same
  samples alone or batched with others, and on any number of threads. `batch_invariant` checks
  this for each model; the service batches only models that pass.
"""

import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ctm_core.network import CTMNetwork
from ctm_core.parametrization import CTMParametrization, c_noise, edm_scalings

ROW_ALIGN = 16
BLOCK_ROWS = 2048
# Fewer rows run in the calling thread as one block: sharing them out costs more than it saves
# (with oneDNN, 1,008 rows take 0.61 ms on one thread and 0.70–0.74 ms shared by two, which wake
# each other; docs/PERFORMANCE.md).
PARALLEL_MIN_ROWS = 2048
_CACHE_SIZE = 1024  # noise levels (and (t, s) pairs) kept per model: a K-step schedule uses K


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
                    initializer=torch.set_num_threads,
                    initargs=(1,),
                )
        if previous is not None:
            previous.shutdown(wait=False)

    def run(self, block: Callable[[int, int], None], rows: int) -> None:
        """Cover rows [0, rows) (a multiple of ROW_ALIGN) with calls to `block`."""
        threads, executor = self.threads, self._executor
        if executor is None or rows < PARALLEL_MIN_ROWS:
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


class FoldedCTM:
    """G(x, t, s) and D(x, t) of a `CTMParametrization` around a `CTMNetwork`, for scalar t and s.

    x is (n,) float32 (the checkpoint's dtype); t and s are scalars (0-dim tensors or floats)
    shared by all rows, as in every sampler. Results match the eager model up to float rounding.
    """

    def __init__(self, model: CTMParametrization) -> None:
        net = model.net
        if not isinstance(net, CTMNetwork):
            raise TypeError(f"no folded runtime for a {type(net).__name__}")
        layers = list(net.mlp)
        linears = layers[0::2]
        if not (
            all(isinstance(layer, nn.Linear) for layer in linears)
            and all(isinstance(layer, nn.SiLU) for layer in layers[1::2])
            and len(linears) == len(layers[1::2]) + 1
        ):
            raise TypeError("no folded runtime for an MLP that is not Linear, SiLU, ..., Linear")
        first, *hidden, last = (layer.weight.detach() for layer in linears)
        first_bias, *hidden_bias, last_bias = (layer.bias.detach() for layer in linears)
        dim = net.embed.dim
        self.embed = net.embed
        self.sigma_data = model.sigma_data
        self.data_mean = model.data_mean
        self.device = first.device
        self.w_x = first[:, 0].contiguous()  # the first layer's column for c_in·x
        self.w_t = first[:, 1 : 1 + dim].contiguous()
        self.w_s = first[:, 1 + dim :].contiguous()
        self.b_first = first_bias.contiguous()
        # oneDNN takes W as stored; addmm(b, h, Wᵀ) reads Wᵀ fastest stored contiguous.
        self.onednn = _ONEDNN_LINEAR and self.device.type == "cpu"
        self.hidden = [
            ((w if self.onednn else w.t()).contiguous(), b.contiguous())
            for w, b in zip(hidden, hidden_bias, strict=True)
        ]
        self.w_out = last[0].contiguous()
        self.b_out = float(last_bias[0])
        self._scaling_cache: dict[float, tuple[float, float, float]] = {}
        self._bias_cache: dict[tuple[float, float], torch.Tensor] = {}

    def jump(self, x: torch.Tensor, t: torch.Tensor | float, s: torch.Tensor | float) -> torch.Tensor:
        """G(x, t, s) = (s/t)·x + (1 − s/t)·g(x, t, s), shape (n,) (Kim et al. 2023, eq. 7)."""
        t_, s_ = _float32(t), _float32(s)
        c_skip, c_out, c_in = self._scalings(t_)
        ratio = float(np.float32(s_) / np.float32(t_))  # in float32, as the eager model computes it
        # G = r·x + (1 − r)·(μ + c_skip·(x − μ) + c_out·F) = a·x + b + c·F.
        a = ratio + (1 - ratio) * c_skip
        b = (1 - ratio) * (1 - c_skip) * self.data_mean
        return self._affine(x, a, b, (1 - ratio) * c_out, c_in, self._first_bias(t_, s_))

    def denoise(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """D(x, t) = g(x, t, t) = μ + c_skip·(x − μ) + c_out·F, shape (n,)."""
        t_ = _float32(t)
        c_skip, c_out, c_in = self._scalings(t_)
        return self._affine(x, c_skip, (1 - c_skip) * self.data_mean, c_out, c_in, self._first_bias(t_, t_))

    @torch.inference_mode()
    def _affine(
        self, x: torch.Tensor, a: float, b: float, c: float, c_in: float, bias: torch.Tensor
    ) -> torch.Tensor:
        """a·x + b + c·F(c_in·(x − μ)), on an aligned row count, block by block."""
        rows = x.shape[0]
        padded = aligned(rows)
        if padded != rows:
            x = torch.cat([x, x.new_zeros(padded - rows)])
        out = torch.empty_like(x)

        def block(start: int, stop: int) -> None:
            with torch.inference_mode():  # per thread: `block` may run in one of ROWS' threads
                xb, f = x[start:stop], out[start:stop]
                self._mlp(xb, c_in, bias, out=f)
                # In place, on a multiple of ROW_ALIGN elements: every element takes the
                # vectorised path, so the rounding is the same at every position.
                f.mul_(c).add_(xb, alpha=a).add_(b)

        if self.device.type == "cpu":
            ROWS.run(block, padded)
        else:  # one pass on a GPU
            block(0, padded)
        return out[:rows] if padded != rows else out

    def _mlp(self, xb: torch.Tensor, c_in: float, bias: torch.Tensor, out: torch.Tensor) -> None:
        """F(c_in·(x − μ), c_noise(t), c_noise(s)) into `out`, with the time inputs folded into `bias`."""
        x_in = (xb - self.data_mean).mul_(c_in)
        spare: torch.Tensor | None = None
        if self.device.type != "cpu":  # the GPU's caching allocator serves fresh arrays
            h = torch.outer(x_in, self.w_x)
        else:
            h, spare = _work_arrays(xb.shape[0], bias.shape[0])
            torch.outer(x_in, self.w_x, out=h)
        F.silu(h.add_(bias), inplace=True)
        for weight, hidden_bias in self.hidden:
            if self.onednn:
                h = torch.ops.mkldnn._linear_pointwise(h, weight, hidden_bias, "none", [], "")
            elif spare is None:  # GPU
                h = torch.addmm(hidden_bias, h, weight)
            else:
                h, spare = torch.addmm(hidden_bias, h, weight, out=spare), h
            F.silu(h, inplace=True)
        torch.mv(h, self.w_out, out=out)
        out.add_(self.b_out)

    def _scalings(self, t: float) -> tuple[float, float, float]:
        """EDM's (c_skip, c_out, c_in) at t, computed in float32 as the eager model does, cached."""
        scalings = self._scaling_cache.get(t)
        if scalings is None:
            c_skip, c_out, c_in = (float(v) for v in edm_scalings(torch.tensor([t]), self.sigma_data))
            scalings = (c_skip, c_out, c_in)
            if len(self._scaling_cache) >= _CACHE_SIZE:
                self._scaling_cache.clear()
            self._scaling_cache[t] = scalings
        return scalings

    def _first_bias(self, t: float, s: float) -> torch.Tensor:
        """The first layer's bias plus its weights on the embeddings of c_noise(t) and c_noise(s), cached."""
        bias = self._bias_cache.get((t, s))
        if bias is None:
            with torch.inference_mode():
                e_t = self.embed(c_noise(torch.tensor([t], device=self.device)))[0]
                e_s = self.embed(c_noise(torch.tensor([s], device=self.device)))[0]
                bias = self.b_first + self.w_t @ e_t + self.w_s @ e_s
            if len(self._bias_cache) >= _CACHE_SIZE:
                self._bias_cache.clear()
            self._bias_cache[(t, s)] = bias
        return bias


def _onednn_linear_works() -> bool:
    """Whether this PyTorch build has oneDNN's dense-input linear and it computes h·Wᵀ + b."""
    if not torch.backends.mkldnn.is_available():
        return False
    generator = torch.Generator().manual_seed(0)
    h, w, b = (torch.randn(shape, generator=generator) for shape in ((32, 8), (4, 8), (4,)))
    try:
        out = torch.ops.mkldnn._linear_pointwise(h, w, b, "none", [], "")
    except (AttributeError, NotImplementedError, RuntimeError):
        return False
    return bool(torch.allclose(out, torch.addmm(b, h, w.t()), atol=1e-5))


# CPU only: the GPU path (and a build without oneDNN) keeps addmm.
_ONEDNN_LINEAR = _onednn_linear_works()


def _float32(sigma: torch.Tensor | float) -> float:
    """A noise level rounded to float32, the precision of x and of the eager model's scalings."""
    return float(np.float32(float(sigma)))


_scratch = threading.local()


def _work_arrays(rows: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two (rows, width) float32 CPU arrays that this thread reuses for the MLP's activations,
    instead of a fresh one per layer."""
    pool: dict[int, tuple[torch.Tensor, torch.Tensor]] = _scratch.__dict__.setdefault("pool", {})
    arrays = pool.get(width)
    if arrays is None or arrays[0].shape[0] < rows:
        size = max(rows, BLOCK_ROWS)
        arrays = pool[width] = (torch.empty(size, width), torch.empty(size, width))
    return arrays[0][:rows], arrays[1][:rows]


def batch_invariant(runtime: FoldedCTM, seed: int = 0) -> bool:
    """Whether rows come out bit-identical alone and amid other rows, at several sizes and offsets.

    A check of `ROW_ALIGN`'s premise on this machine's BLAS, for this model: the service batches
    requests only for models that pass.
    """
    generator = torch.Generator().manual_seed(seed)
    x = (3 * torch.randn(3 * BLOCK_ROWS + 99, generator=generator)).to(runtime.device)
    t, s = torch.tensor(2.5), torch.tensor(0.01)
    with torch.inference_mode():
        whole = runtime.jump(x, t, s)
        whole_d = runtime.denoise(x, t)
        for start, rows in (
            (0, 1),
            (5, 3),
            (17, 203),
            (0, 16),
            (1000, BLOCK_ROWS + 1),
            (31, 2 * ROW_ALIGN + 1),
        ):
            part = x[start : start + rows].clone()
            if not torch.equal(runtime.jump(part, t, s), whole[start : start + rows]):
                return False
            if not torch.equal(runtime.denoise(part, t), whole_d[start : start + rows]):
                return False
    return True


class Runtimes:
    """The runtime of each served model, built on first use and dropped with the model."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._built: weakref.WeakKeyDictionary[nn.Module, tuple[FoldedCTM | nn.Module, bool]] = (
            weakref.WeakKeyDictionary()
        )

    def get(self, model: CTMParametrization) -> tuple[FoldedCTM | nn.Module, bool]:
        """(runtime, whether batching keeps results bit-identical): the folded runtime when the
        network is a `CTMNetwork` MLP, else the eager model (not batched)."""
        with self._lock:
            built = self._built.get(model)
        if built is None:
            try:
                runtime = FoldedCTM(model)
            except TypeError:
                built = (model, False)
            else:
                built = (runtime, batch_invariant(runtime))
            with self._lock:
                self._built[model] = built
        return built

    def known(self, model: CTMParametrization) -> bool | None:
        """Whether `model` may be batched: None until its runtime is built."""
        with self._lock:
            built = self._built.get(model)
        return None if built is None else built[1]
