"""The raw network F_θ(c_in·x; c_noise(t), c_noise(s)) and its time embedding.

Two kinds (`NetworkConfig.kind`): `MonotoneNetwork`, non-decreasing in x by construction (the
default: in 1D the exact flow G*(·, t, s) is increasing, so a learned jump must not fold), and
`CTMNetwork`, a plain MLP on (x, embeddings).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
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
        _initialise_hidden(layers[:-1], config.init)

    def forward(
        self, x_in: torch.Tensor, noise_t: torch.Tensor, noise_s: torch.Tensor
    ) -> tuple[torch.Tensor, None]:
        """(F, None): the MLP's output, shape (B,), and no skip gate."""
        rows = x_in.shape[0]
        embedded = [self.embed(noise_t).expand(rows, -1), self.embed(noise_s).expand(rows, -1)]
        return self.mlp(torch.cat([x_in[:, None], *embedded], dim=1)).squeeze(1), None


@dataclass(frozen=True)
class MonotoneCoefficients:
    """The coefficients of M(·; t, s) for each row's (t, s): shapes (B, K) for the units, (B,) else."""

    amplitude: torch.Tensor  # a_k ≥ 0
    slope: torch.Tensor  # w_k > 0
    centre: torch.Tensor  # m_k
    bias: torch.Tensor  # b
    linear: torch.Tensor  # l ≥ 0
    gate: torch.Tensor  # ρ ∈ (0, 1)


class MonotoneNetwork(nn.Module):
    """F(x_in; t, s) = b + l·x_in + Σ_k a_k·tanh(w_k·(x_in − m_k)), non-decreasing in x_in.

    A conditioner MLP on the embeddings of c_noise(t) and c_noise(s) gives every coefficient,
    with a_k > 0 and w_k > 0 (exp) and l ≥ 0 (softplus), so F is a monotone function of x for every
    (t, s) — a sum of sigmoids, the form of the monotone transformers of neural autoregressive
    flows (Huang et al. 2018). It also gives the skip gate ρ ∈ (0, 1) by which the
    parametrisation scales down c_skip, so that g's slope can fall anywhere in [0, c_skip].
    At a fixed (t, s) — every sampler step — F is K tanh units per row.
    """

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        self.units = config.units
        self.embed = FourierEmbedding(config.time_frequencies, config.max_frequency)
        layers: list[nn.Module] = []
        width_in = 2 * self.embed.dim
        for _ in range(config.depth):
            layers += [nn.Linear(width_in, config.width), nn.SiLU()]
            width_in = config.width
        self.trunk = nn.Sequential(*layers)
        _initialise_hidden(layers, config.init)
        self.head = nn.Linear(width_in, 3 * self.units + 3)
        k = self.units
        with torch.no_grad():
            # Start with the units spread over the standardised input's range at varied
            # steepness, summing to an identity-like ramp of height ±3: every unit differs.
            self.head.weight.mul_(0.1)
            base = torch.zeros(3 * k + 3)
            base[:k] = math.log(3.0 / k)  # log a_k: the units sum to a ramp of height ±3
            base[k : 2 * k] = torch.linspace(-0.7, 1.4, k)[torch.randperm(k)]  # log w_k
            base[2 * k : 3 * k] = torch.linspace(-3.0, 3.0, k)  # the centres m_k
            base[3 * k + 1] = _softplus_inverse(0.1)  # l
            self.head.bias.copy_(base)

    def coefficients(self, noise_t: torch.Tensor, noise_s: torch.Tensor) -> MonotoneCoefficients:
        """The coefficients of F at each row's (c_noise(t), c_noise(s)), shapes (B,) (or (1,) for
        one pair shared by every sample) → see the class."""
        out = self.head(self.trunk(torch.cat([self.embed(noise_t), self.embed(noise_s)], dim=1)))
        k = self.units
        slope = out[:, k : 2 * k].clamp(max=_MAX_LOG_SCALE).exp()
        return MonotoneCoefficients(
            amplitude=out[:, :k].clamp(max=_MAX_LOG_SCALE).exp(),
            slope=slope,
            # Each unit is learned by its centre m_k, so that a steep unit moves as easily as a
            # gentle one (with an offset c_k = −w_k·m_k learned instead, steep units barely moved).
            centre=out[:, 2 * k : 3 * k],
            bias=out[:, 3 * k],
            linear=F.softplus(out[:, 3 * k + 1]),
            gate=torch.sigmoid(out[:, 3 * k + 2]),
        )

    def forward(
        self, x_in: torch.Tensor, noise_t: torch.Tensor, noise_s: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(F, ρ): F shape (B,), ρ shape (B,), or (1,) when the times are one shared row."""
        co = self.coefficients(noise_t, noise_s)
        return monotone_sum(x_in, co), co.gate


def monotone_sum(x_in: torch.Tensor, co: MonotoneCoefficients) -> torch.Tensor:
    """b + l·x_in + Σ_k a_k·tanh(w_k·(x_in − m_k)) for x_in (B,) and coefficients of B rows (or 1 row).

    The difference comes first: it is exact near a steep unit's centre, where w_k·x_in + c_k
    would cancel two large terms."""
    units = torch.tanh((x_in[:, None] - co.centre) * co.slope)
    return co.bias + co.linear * x_in + (units * co.amplitude).sum(dim=1)


def build_network(config: NetworkConfig) -> nn.Module:
    """The raw network `config.kind` names."""
    return MonotoneNetwork(config) if config.kind == "monotone" else CTMNetwork(config)


# exp(8) ≈ 3,000: a steeper unit or a taller one than a standardised input needs, and no overflow.
_MAX_LOG_SCALE = 8.0


def _initialise_hidden(layers: list[nn.Module], init: str) -> None:
    """He-normal weights and zero biases for the hidden Linear layers when `init` is "he".

    PyTorch's default (variance 1/(3·fan_in)) shrinks the signal about 4-fold per SiLU layer;
    with it some seeds' MLP teachers never left the Gaussian denoiser's plateau.
    """
    if init != "he":
        return
    for layer in layers:
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)


def _softplus_inverse(y: float) -> float:
    return math.log(math.expm1(y))
