"""EDM preconditioning and the CTM jump G(x, t, s) around any raw network F_θ."""

import math

import torch
from torch import nn


def edm_scalings(t: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EDM preconditioning (Karras et al. 2022, Table 1): (c_skip, c_out, c_in) at noise level t."""
    var = t**2 + sigma_data**2
    c_skip = sigma_data**2 / var
    c_out = t * sigma_data / var.sqrt()
    c_in = 1 / var.sqrt()
    return c_skip, c_out, c_in


def c_noise(t: torch.Tensor) -> torch.Tensor:
    """EDM noise conditioning c_noise(t) = ¼·ln t (t > 0: the time range ends at σ_min, never 0)."""
    return 0.25 * t.log()


class CTMParametrization(nn.Module):
    """Wraps a raw network F_θ(x_in, c_noise(t), c_noise(s)) into g_θ and the CTM jump G_θ.

    g_θ(x, t, s) = c_skip(t)·(1 − ρ)·x + c_out(t)·F_θ(c_in(t)·x, c_noise(t), c_noise(s))
    G_θ(x, t, s) = (s/t)·x + (1 − s/t)·g_θ(x, t, s)          (Kim et al. 2023, eq. 7)
    All inputs are broadcast to x's shape (batch,). x is measured from the data's mean μ (so
    g(x) = μ + g_centred(x − μ)); G keeps its form and G(x, t, t) = x still holds exactly.
    ρ = ρ_θ(t, s) ∈ (0, 1) is the network's skip gate (0 for a network without one). With a
    network non-decreasing in x (`MonotoneNetwork`), g and every jump G(·, t, s ≤ t) are
    non-decreasing in x, as the exact 1D flow is; ρ lets g's slope fall below c_skip(t).
    """

    def __init__(self, net: nn.Module, sigma_data: float, data_mean: float = 0.0) -> None:
        super().__init__()
        if not (sigma_data > 0 and math.isfinite(sigma_data)):
            raise ValueError(f"sigma_data must be positive and finite, got {sigma_data}")
        if not math.isfinite(data_mean):
            raise ValueError(f"data_mean must be finite, got {data_mean}")
        self.net = net
        self.sigma_data = float(sigma_data)
        self.data_mean = float(data_mean)

    def g(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The CTM output g_θ(x, t, s): an estimate of the trajectory's end seen from (x, t) via s.

        Scalar t and s (every sampler step) reach the network as one row that it broadcasts,
        so its time-dependent part runs once, not once per sample.
        """
        t, s = _times(t, x), _times(s, x)
        c_skip, c_out, c_in = edm_scalings(t, self.sigma_data)
        centred = x - self.data_mean
        out, gate = self.net(c_in * centred, c_noise(t), c_noise(s))
        skip = c_skip if gate is None else c_skip * (1 - gate)
        return self.data_mean + skip * centred + c_out * out

    def forward(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The jump G_θ(x, t, s) from time t to time s ≤ t along the PF-ODE; G(x, t, t) = x."""
        t, s = _times(t, x), _times(s, x)
        ratio = s / t
        return ratio * x + (1 - ratio) * self.g(x, t, s)

    jump = forward

    def denoise(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The denoiser D_θ(x, t) = g_θ(x, t, t), i.e. the estimate of E[x_0 | x_t = x]."""
        return self.g(x, t, t)


def _times(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """A time as one row (shape (1,)) when it is a scalar, else broadcast to x's shape (batch,)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.reshape(1) if t.numel() == 1 else torch.broadcast_to(t, x.shape)
