"""The raw network F_θ: a small MLP on (c_in·x, embedding of c_noise(t), embedding of c_noise(s))."""

import math

import torch
from torch import nn

from ctm_core.config import NetworkConfig


class FourierEmbedding(nn.Module):
    """Fixed Fourier features [v, sin(2π f_k v), cos(2π f_k v)] of a scalar v, shape (B,) → (B, 1+2K).

    The frequencies are geometric from min to max: low frequencies keep the map smooth in time,
    so that off-grid times (γ-sampling, any schedule) behave like the grid times seen in training.
    """

    def __init__(self, n_frequencies: int, max_frequency: float) -> None:
        super().__init__()
        freqs = torch.logspace(
            math.log10(max_frequency / 2 ** (n_frequencies - 1)),
            math.log10(max_frequency),
            n_frequencies,
        )
        self.register_buffer("frequencies", 2 * math.pi * freqs, persistent=False)
        self.dim = 1 + 2 * n_frequencies

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        angles = v[:, None] * self.frequencies
        return torch.cat([v[:, None], angles.sin(), angles.cos()], dim=1)


class CTMNetwork(nn.Module):
    """F_θ(x_in, c_noise(t), c_noise(s)) → (B,): an MLP that sees both the current and target time."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = FourierEmbedding(config.time_frequencies, config.max_frequency)
        layers: list[nn.Module] = []
        width_in = 1 + 2 * self.embed.dim
        for _ in range(config.depth):
            layers += [nn.Linear(width_in, config.width), nn.SiLU()]
            width_in = config.width
        layers.append(nn.Linear(width_in, 1))
        self.mlp = nn.Sequential(*layers)
        if config.init == "he":
            # PyTorch's default (variance 1/(3·fan_in)) shrinks the x-dependent signal about 4-fold
            # per SiLU layer; some seeds' teachers then never leave the Gaussian denoiser's plateau.
            for layer in layers[:-1]:
                if isinstance(layer, nn.Linear):
                    nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                    nn.init.zeros_(layer.bias)

    def forward(self, x_in: torch.Tensor, noise_t: torch.Tensor, noise_s: torch.Tensor) -> torch.Tensor:
        features = torch.cat([x_in[:, None], self.embed(noise_t), self.embed(noise_s)], dim=1)
        return self.mlp(features).squeeze(1)
