"""The served network's runtime: the CTM jump G(x, t, s) of a checkpoint, computed faster than eager.

Built once per loaded model from its weights (`runtime_for`, checked by `verify_runtime` when the
model loads: `ctm_core.model.checked_runtime`); ctm_core's samplers run on it
unchanged, since it has the model's `jump(x, t, s)` and `denoise(x, t)`. Same math as
`CTMParametrization` around `CTMNetwork` (`FoldedCTM`) or `MonotoneNetwork` (`FoldedMonotone`),
rearranged for serving (docs/PERFORMANCE.md):

- Every sampler step uses one (t, s) for all rows, so the time embeddings and their part of the
  first layer fold into one bias vector per (t, s), and the EDM scalings and the jump's mixing
  into three scalars: G = a·x + b + c·F, with F the MLP's output. For the monotone network the
  conditioner runs once per (t, s) and everything but its tanh units folds into the scalars:
  G = A·x + B + C·Σ_k a_k·tanh(w_k·c_in·(x − μ) + c_k).
- The hidden layers' matrix products go through oneDNN's linear (`torch.ops.mkldnn._linear_pointwise`,
  what `torch.compile` emits for Linear on CPU) where PyTorch has it: it uses this CPU's AVX-512,
  where MKL's `addmm` does not, and takes 0.43× the time at 1,000 rows (docs/PERFORMANCE.md).
- Rows run in aligned blocks on a few threads (`ctm_core.rows`), so a row's value ignores its
  batch and the caller's thread count.
"""

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ctm_core.network import CTMNetwork, MonotoneNetwork
from ctm_core.parametrization import CTMParametrization, c_noise, edm_scalings
from ctm_core.rows import BLOCK_ROWS, ROW_ALIGN, run_blocks, single_threaded_ops, work_arrays

# Noise levels (and (t, s) pairs) kept per model, least recently used first out: the longest default
# schedule (euler, 256 steps) fits with room, and requests with arbitrary `sigmas` cannot grow
# memory (1,024 entries a model held 3.3 MB, refilled after each emptying: the soak's early rise).
CACHE_ENTRIES = 320


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
        self._scaling_cache: LevelCache[float, tuple[float, float, float]] = LevelCache()
        self._bias_cache: LevelCache[tuple[float, float], torch.Tensor] = LevelCache()

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

        def block(xb: torch.Tensor, f: torch.Tensor) -> None:
            self._mlp(xb, c_in, bias, out=f)
            # In place, on a multiple of ROW_ALIGN elements: every element takes the
            # vectorised path, so the rounding is the same at every position.
            f.mul_(c).add_(xb, alpha=a).add_(b)

        return run_blocks(block, x, self.device)

    def _mlp(self, xb: torch.Tensor, c_in: float, bias: torch.Tensor, out: torch.Tensor) -> None:
        """F(c_in·(x − μ), c_noise(t), c_noise(s)) into `out`, with the time inputs folded into `bias`."""
        x_in = (xb - self.data_mean).mul_(c_in)
        spare: torch.Tensor | None = None
        if self.device.type != "cpu":  # the GPU's caching allocator serves fresh arrays
            h = torch.outer(x_in, self.w_x)
        else:
            h, spare = work_arrays(xb.shape[0], bias.shape[0])
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

        def make() -> tuple[float, float, float]:
            c_skip, c_out, c_in = (float(v) for v in edm_scalings(torch.tensor([t]), self.sigma_data))
            return c_skip, c_out, c_in

        return self._scaling_cache.get(t, make)

    def _first_bias(self, t: float, s: float) -> torch.Tensor:
        """The first layer's bias plus its weights on the embeddings of c_noise(t) and c_noise(s), cached."""

        def make() -> torch.Tensor:
            with torch.inference_mode():
                e_t = self.embed(c_noise(torch.tensor([t], device=self.device)))[0]
                e_s = self.embed(c_noise(torch.tensor([s], device=self.device)))[0]
                return self.b_first + self.w_t @ e_t + self.w_s @ e_s

        return self._bias_cache.get((t, s), make)


@dataclass(frozen=True)
class _MonotoneFold:
    """g(x, t, s) = a·x + b + c·Σ_k amplitude_k·tanh(slope_k·(c_in·(x − μ) − centre_k)) at one (t, s)."""

    a: float
    b: float
    c: float
    c_in: float
    slope: torch.Tensor  # (K,)
    centre: torch.Tensor  # (K,)
    amplitude: torch.Tensor  # (K,)


class FoldedMonotone:
    """G(x, t, s) and D(x, t) of a `CTMParametrization` around a `MonotoneNetwork`, for scalar t and s.

    Per (t, s) the conditioner runs once (as in the eager model, which sees one row of times),
    and g = μ + c_skip·(1 − ρ)·(x − μ) + c_out·(b + l·x_in + Σ_k a_k·tanh(w_k·x_in + c_k)),
    x_in = c_in·(x − μ), folds into g = a·x + b' + c_out·Σ_k(...): per row only the K units are
    left. x is (n,) float32; t and s are scalars shared by all rows. Results match the eager model
    up to float rounding, and keep its guarantees: G(x, t, t) = x exactly, and non-decreasing in x.
    """

    def __init__(self, model: CTMParametrization) -> None:
        net = model.net
        if not isinstance(net, MonotoneNetwork):
            raise TypeError(f"no folded monotone runtime for a {type(net).__name__}")
        self.net = net
        self.units = net.units
        self.sigma_data = model.sigma_data
        self.data_mean = model.data_mean
        self.device = net.head.weight.device
        self._fold_cache: LevelCache[tuple[float, float], _MonotoneFold] = LevelCache()

    def jump(self, x: torch.Tensor, t: torch.Tensor | float, s: torch.Tensor | float) -> torch.Tensor:
        """G(x, t, s) = (s/t)·x + (1 − s/t)·g(x, t, s), shape (n,) (Kim et al. 2023, eq. 7)."""
        t_, s_ = _float32(t), _float32(s)
        ratio = float(np.float32(s_) / np.float32(t_))  # in float32, as the eager model computes it
        fold = self._fold(t_, s_)
        # G = r·x + (1 − r)·(a·x + b + c·Σ) = A·x + B + C·Σ; at s = t: A = 1, B = C = 0, G = x.
        rest = 1 - ratio
        return self._units(x, fold, ratio + rest * fold.a, rest * fold.b, rest * fold.c)

    def denoise(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """D(x, t) = g(x, t, t), shape (n,)."""
        t_ = _float32(t)
        fold = self._fold(t_, t_)
        return self._units(x, fold, fold.a, fold.b, fold.c)

    @torch.inference_mode()
    def _units(self, x: torch.Tensor, fold: _MonotoneFold, a: float, b: float, c: float) -> torch.Tensor:
        """a·x + b + c·Σ_k amplitude_k·tanh(slope_k·(c_in·(x − μ) − centre_k)), block by block."""

        def block(xb: torch.Tensor, f: torch.Tensor) -> None:
            x_in = (xb - self.data_mean).mul_(fold.c_in)  # as the eager model rounds it
            if self.device.type == "cpu":
                h = work_arrays(xb.shape[0], self.units)[0]
                torch.sub(x_in[:, None], fold.centre, out=h)
            else:  # the GPU's caching allocator serves fresh arrays
                h = x_in[:, None] - fold.centre
            h.mul_(fold.slope).tanh_()  # the eager model's order: (x_in − m)·w
            # A matrix-vector product on an aligned row count: the same rounding for a row
            # wherever it sits (see the module's docstring), as the MLP's last layer.
            torch.mv(h, fold.amplitude, out=f)
            f.mul_(c).add_(xb, alpha=a).add_(b)

        return run_blocks(block, x, self.device)

    def _fold(self, t: float, s: float) -> _MonotoneFold:
        """The coefficients at (t, s) and the scalars around them, computed once, cached."""

        def make() -> _MonotoneFold:
            with torch.inference_mode():
                t_row = torch.tensor([t], device=self.device)  # float32, one row: as `_times` gives
                s_row = torch.tensor([s], device=self.device)
                co = self.net.coefficients(c_noise(t_row), c_noise(s_row))
                c_skip, c_out, c_in = edm_scalings(t_row, self.sigma_data)
                skip = float(c_skip * (1 - co.gate))  # in float32, as the eager model's g
                c_out_, c_in_ = float(c_out), float(c_in)
                # g = μ + skip·(x − μ) + c_out·(b + l·c_in·(x − μ) + Σ) = a·x + b' + c_out·Σ.
                a = skip + c_out_ * float(co.linear) * c_in_
                return _MonotoneFold(
                    a=a,
                    b=self.data_mean * (1 - a) + c_out_ * float(co.bias),
                    c=c_out_,
                    c_in=c_in_,
                    slope=co.slope[0].contiguous(),
                    centre=co.centre[0].contiguous(),
                    amplitude=co.amplitude[0].contiguous(),
                )

        return self._fold_cache.get((t, s), make)


class Runtime(Protocol):
    """What the samplers and the service need of a model: the jump and the denoiser, and where."""

    device: torch.device

    def jump(self, x: torch.Tensor, t: torch.Tensor | float, s: torch.Tensor | float) -> torch.Tensor: ...

    def denoise(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor: ...


def folded_runtime(model: CTMParametrization) -> FoldedCTM | FoldedMonotone:
    """The folded runtime for `model`'s network; TypeError when there is none for it."""
    if isinstance(model.net, MonotoneNetwork):
        return FoldedMonotone(model)
    return FoldedCTM(model)


_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class LevelCache(Generic[_K, _V]):
    """Values made per noise level, at most `entries` of them, the least recently used dropped first;
    safe to share between the threads that run batches."""

    def __init__(self, entries: int = CACHE_ENTRIES) -> None:
        self.entries = entries
        self._values: OrderedDict[_K, _V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: _K, make: Callable[[], _V]) -> _V:
        """The value at `key`, made (outside the lock) on a miss."""
        with self._lock:
            value = self._values.get(key)
            if value is not None:
                self._values.move_to_end(key)
                return value
        with single_threaded_ops():  # rounded alike whatever thread makes it (e.g. its matvecs)
            value = make()
        with self._lock:
            self._values[key] = value
            if len(self._values) > self.entries:
                self._values.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._values)


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


def batch_invariant(runtime: Runtime, seed: int = 0) -> bool:
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


def runtime_for(model: CTMParametrization) -> Runtime | nn.Module:
    """The runtime that serves `model`: folded for a `CTMNetwork` MLP or a `MonotoneNetwork`,
    else the eager model itself."""
    try:
        return folded_runtime(model)
    except TypeError:
        return model


# Probe levels of `verify_runtime`, as fractions of σ_max (clamped to σ_min): the one-step jump, a
# multistep jump, a short jump and the denoiser's (t, t).
_PROBE_FRACTIONS = ((1.0, 0.0), (1.0, 0.3), (0.05, 0.01), (0.2, 0.2))
# The tolerance the runtime tests hold the folded runtimes to (tests/test_performance_runtime.py).
VERIFY_RTOL = VERIFY_ATOL = 1e-5


def verify_runtime(
    runtime: Runtime | nn.Module, model: CTMParametrization, sigma_min: float, sigma_max: float, center: float
) -> None:
    """ValueError unless `runtime`'s jumps equal `model`'s G on a probe batch, within
    VERIFY_RTOL/ATOL of the eager values, and are finite: the served object is the checked one."""
    spread = torch.linspace(-4.0, 4.0, 33, device=next(model.parameters()).device)
    with torch.inference_mode():
        for t_frac, s_frac in _PROBE_FRACTIONS:
            t = torch.tensor(max(t_frac * sigma_max, sigma_min))
            s = torch.tensor(max(s_frac * sigma_max, sigma_min))
            x = center + spread * max(float(t), 1.0)  # inputs at the scale of x_t
            served, eager = runtime.jump(x, t, s), model.jump(x, t, s)
            if not torch.isfinite(served).all():
                raise ValueError(f"the model's jump G(x, {float(t):g}, {float(s):g}) is not finite")
            if not torch.allclose(served, eager, rtol=VERIFY_RTOL, atol=VERIFY_ATOL):
                worst = float((served - eager).abs().max())
                raise ValueError(
                    f"the served runtime's G(x, {float(t):g}, {float(s):g}) differs from the model's by "
                    f"{worst:.3g}"
                )
