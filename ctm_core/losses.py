"""Training losses: EDM denoising score matching and the CTM soft consistency loss (no GAN)."""

import torch

from ctm_core.parametrization import CTMParametrization


class DSMLoss:
    """Denoising score matching, EDM loss (Karras et al. 2022, eq. 2 and Table 1).

    ln t ~ N(P_mean, P_std²) (clamped to the model's time range), λ(t) = (t² + σ_d²)/(t·σ_d)²,
    loss = E λ(t)·(D_θ(x_0 + t·ε, t) − x_0)².

    With `reference` samples (which should include the batch x_0 itself), the regression target
    x_0 is replaced by the posterior mean of x_0 given x_t under their empirical distribution
    (the "stable target field" of Xu et al. 2023): the same minimiser as the number of references
    grows, with far less variance at medium and large t, where x_0 given x_t is still uncertain.
    """

    def __init__(
        self, p_mean: float, p_std: float, sigma_data: float, sigma_min: float, sigma_max: float
    ) -> None:
        self.p_mean, self.p_std, self.sigma_data = p_mean, p_std, sigma_data
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def __call__(
        self,
        model: CTMParametrization,
        x0: torch.Tensor,
        generator: torch.Generator,
        reference: torch.Tensor | None = None,
    ) -> torch.Tensor:
        rnd = torch.randn(x0.shape, generator=generator).to(x0.device)
        t = (rnd * self.p_std + self.p_mean).exp().clamp(self.sigma_min, self.sigma_max)
        weight = (t**2 + self.sigma_data**2) / (t * self.sigma_data) ** 2
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        x_t = x0 + t * noise
        target = x0 if reference is None else stable_target(x_t, t, reference)
        denoised = model.denoise(x_t, t)
        return (weight * (denoised - target) ** 2).mean()


def stable_target(x_t: torch.Tensor, t: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """E[x_0 | x_t] when x_0 is uniform over `points`: a softmax over −(x_t − p_j)²/(2t²).

    Shapes: x_t, t (B,); points (R,) → (B,). The softmax subtracts each row's maximum, so the
    huge logits of small t are safe in float32.
    """
    logits = -((x_t[:, None] - points[None, :]) ** 2) / (2 * t[:, None] ** 2)
    return torch.softmax(logits, dim=1) @ points


class ConsistencyLoss:
    """CTM soft consistency loss (Kim et al. 2023, eq. 9), squared error in 1D data space.

    estimate = G_sg(G_θ(x_t, t, s), s, σ_min);  target = G_sg(G_sg(x_u, u, s), s, σ_min),
    where x_u is the solver's solution of the PF-ODE from (x_t, t) to u, given by the caller.
    Only G_θ(x_t, t, s) carries gradients; `target` is the stop-gradient (EMA) network.

    `intermediate_weight` adds the same comparison at time s itself, before the jump to σ_min:
    w·c_skip(s)·(G_θ(x_t, t, s) − G_sg(x_u, u, s))², c_skip(s) = σ_d²/(s² + σ_d²) putting the
    error in units of the spread of x_s. The jump to σ_min contracts differences between modes,
    so in 1D the data-space term alone leaves intermediate jumps (multistep, γ < 1) loose.
    """

    def __init__(self, sigma_min: float, sigma_data: float = 1.0, intermediate_weight: float = 0.0) -> None:
        self.sigma_min = sigma_min
        self.sigma_data = sigma_data
        self.intermediate_weight = intermediate_weight

    def __call__(
        self,
        model: CTMParametrization,
        target: CTMParametrization,
        x_t: torch.Tensor,
        t: torch.Tensor,
        x_u: torch.Tensor,
        u: torch.Tensor,
        s: torch.Tensor,
    ) -> torch.Tensor:
        end = torch.full_like(s, self.sigma_min)
        estimate_s = model.jump(x_t, t, s)
        estimate = target.jump(estimate_s, s, end)
        with torch.no_grad():
            goal_s = target.jump(x_u, u, s)
            goal = target.jump(goal_s, s, end)
        loss = ((estimate - goal) ** 2).mean()
        if self.intermediate_weight > 0:
            c_skip = self.sigma_data**2 / (s**2 + self.sigma_data**2)
            loss = loss + self.intermediate_weight * (c_skip * (estimate_s - goal_s) ** 2).mean()
        return loss
