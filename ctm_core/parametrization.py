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

    g_θ(x, t, s) = c_skip(t)·x + c_out(t)·F_θ(c_in(t)·x, c_noise(t), c_noise(s))
    G_θ(x, t, s) = (s/t)·x + (1 − s/t)·g_θ(x, t, s)          (Kim et al. 2023, eq. 7)
    All inputs are broadcast to x's shape (batch,). x is measured from the data's mean μ (so
    g(x) = μ + g_centred(x − μ)); G keeps its form and G(x, t, t) = x still holds exactly.
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
        """The CTM output g_θ(x, t, s): an estimate of the trajectory's end seen from (x, t) via s."""
        t, s = torch.broadcast_to(t, x.shape), torch.broadcast_to(s, x.shape)
        c_skip, c_out, c_in = edm_scalings(t, self.sigma_data)
        centred = x - self.data_mean
        return self.data_mean + c_skip * centred + c_out * self.net(c_in * centred, c_noise(t), c_noise(s))

    def forward(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The jump G_θ(x, t, s) from time t to time s ≤ t along the PF-ODE; G(x, t, t) = x."""
        t, s = torch.broadcast_to(t, x.shape), torch.broadcast_to(s, x.shape)
        ratio = s / t
        return ratio * x + (1 - ratio) * self.g(x, t, s)

    jump = forward

    def denoise(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The denoiser D_θ(x, t) = g_θ(x, t, t), i.e. the estimate of E[x_0 | x_t = x]."""
        return self.g(x, t, t)
