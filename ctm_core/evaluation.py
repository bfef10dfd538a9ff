"""The evaluation table: sampler × steps → NFE, qW1, W1, KS, NLL (and mode coverage) at fixed seeds."""

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats

from ctm_core.baselines import BASELINES, BaselineUnavailable, MixtureEstimator, fit_baseline
from ctm_core.config import NoiseConfig
from ctm_core.exact import exact_flow
from ctm_core.likelihood import density_log_prob, has_onestep_density
from ctm_core.metrics import evaluate_samples, mode_coverage, w1_two_sample
from ctm_core.parametrization import CTMParametrization
from ctm_core.samplers import JUMP_SAMPLERS, generate, latent
from ctm_core.seeding import seeded_generator
from ctm_core.tasks import EmpiricalTask, Task


@dataclass(frozen=True)
class EvalSpec:
    """One row of the table: which network ("student", "teacher", "exact") and which sampler."""

    network: str
    sampler: str
    steps: int
    gamma: float = 0.0

    @property
    def label(self) -> str:
        if self.sampler == "flow":
            return "exact flow (the limit)"
        name = f"{self.network} {self.sampler}"
        if self.sampler == "gamma":
            name += f"(γ={self.gamma:g})"
        return f"{name} {self.steps}" if self.sampler != "onestep" else name


class ExactDenoiser:
    """The task's closed-form (or quadrature) denoiser E[x_0 | x_t], for the ODE limit."""

    def __init__(self, task: Task) -> None:
        self.task = task

    def denoise(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.task.denoise(x, t)


# Heun steps of a "resolved" ODE solve: its own discretisation error is below 1e-4 in qW1 here.
RESOLVED_HEUN_STEPS = 256

DEFAULT_SPECS: tuple[EvalSpec, ...] = (
    EvalSpec("student", "onestep", 1),
    EvalSpec("student", "multistep", 2),
    EvalSpec("student", "multistep", 4),
    EvalSpec("student", "gamma", 4, 0.5),
    EvalSpec("student", "heun", 18),
    EvalSpec("teacher", "heun", 18),
    EvalSpec("teacher", "heun", RESOLVED_HEUN_STEPS),
    EvalSpec("exact", "flow", 1),
)


class ExactFlow:
    """The exact flow's one-step map x_T ↦ F_data⁻¹(F_σmax(x_T)) (`ctm_core.exact`), as a sampler."""

    def __init__(self, task: Task, noise: NoiseConfig) -> None:
        self.task, self.noise = task, noise

    def __call__(self, x_T: torch.Tensor) -> torch.Tensor:
        y = exact_flow(self.task, x_T.double().numpy(), self.noise.sigma_max, self.noise.sigma_min)
        return torch.from_numpy(y)


def evaluate(
    student: CTMParametrization,
    teacher: CTMParametrization | None,
    noise: NoiseConfig,
    task: Task,
    specs: tuple[EvalSpec, ...] = DEFAULT_SPECS,
    n: int = 20_000,
    seed: int = 0,
    holdout: np.ndarray | None = None,
    exact: bool = True,
) -> list[dict[str, Any]]:
    """Run every spec twice (quantile latents for qW1; random latents for W1, KS, NLL) and tabulate.

    Rows whose network is missing (no teacher; no exact reference when `exact` is False) are
    skipped. The "exact" network is the task's exact flow (sampler "flow") or its exact denoiser
    (an ODE solver's own error).
    With `holdout`, each row also gets "W1_holdout": W1 between random samples and the held-out data.
    """
    networks: dict[str, Any] = {"student": student}
    if teacher is not None:
        networks["teacher"] = teacher
    if exact:
        networks["exact"] = ExactDenoiser(task)
    rows = []
    for spec in specs:
        model = networks.get(spec.network)
        if model is None or (spec.network == "exact" and spec.sampler in JUMP_SAMPLERS):
            continue
        if spec.sampler == "flow":
            rows.append(_flow_row(spec, ExactFlow(task, noise), noise, task, n, seed, holdout))
            continue
        run = {
            "sampler": spec.sampler,
            "steps": spec.steps,
            "n": n,
            "seed": seed,
            "gamma": spec.gamma,
            **noise.sampling_kwargs(),
        }
        quantile = generate(model, noise="quantile", **run)
        random = generate(model, noise="random", **run).samples
        row: dict[str, Any] = {"label": spec.label, **spec.__dict__, "nfe": quantile.nfe}
        row |= {"qW1": evaluate_samples(quantile.samples, task, quantile=True)["qW1"]}
        row |= {k: v for k, v in evaluate_samples(random, task, quantile=False).items() if k != "qW1"}
        row["modes"] = mode_coverage(random, task)
        if holdout is not None and holdout.size:
            row["W1_holdout"] = w1_two_sample(random, holdout)
        rows.append(row)
    return rows


def _flow_row(
    spec: EvalSpec,
    flow: ExactFlow,
    noise: NoiseConfig,
    task: Task,
    n: int,
    seed: int,
    holdout: np.ndarray | None,
) -> dict[str, Any]:
    """The evaluation row of the exact flow: the same latents as the samplers', mapped exactly."""
    mean, std = noise.data_mean or 0.0, noise.prior_std
    quantile = flow(latent(n, mean, std, "quantile", torch.Generator()))
    random = flow(latent(n, mean, std, "random", seeded_generator(seed)))
    row: dict[str, Any] = {"label": spec.label, **spec.__dict__, "nfe": 0, "n": n, "seed": seed}
    row["qW1"] = evaluate_samples(quantile, task, quantile=True)["qW1"]
    row |= {k: v for k, v in evaluate_samples(random, task, quantile=False).items() if k != "qW1"}
    row["modes"] = mode_coverage(random, task)
    if holdout is not None and holdout.size:
        row["W1_holdout"] = w1_two_sample(random, holdout)
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table of evaluation rows, for the terminal and the docs."""
    has_holdout = any("W1_holdout" in r for r in rows)
    header = f"{'sampler':<28}{'NFE':>5}{'qW1':>9}{'W1':>9}{'KS':>9}{'NLL':>9}"
    header += f"{'W1 hold':>9}" if has_holdout else ""
    lines = [header, "-" * len(header)]
    for r in rows:
        line = f"{r['label']:<28}{r['nfe']:>5}{r['qW1']:>9.4f}{r['W1']:>9.4f}{r['KS']:>9.4f}{r['NLL']:>9.3f}"
        if has_holdout:
            line += f"{r.get('W1_holdout', float('nan')):>9.4f}"
        lines.append(line)
    return "\n".join(lines)


def table_legend(rows: list[dict[str, Any]], user_data: bool = False) -> str:
    """One line per column of `format_table(rows)`: what it is and its unit.

    `user_data`: the rows measure a model of user data (an EmpiricalTask of the training split), so
    the reference of qW1, W1, KS and NLL is the training split, not an exact distribution.
    """
    reference = "the training split" if user_data else "the task's exact distribution"
    density = "a Scott's-rule KDE of the training split" if user_data else "the task's exact density"
    legend = [
        "columns (every score: lower is better):",
        "  sampler  network and sampler with its steps (student: the CTM model; teacher: its diffusion "
        "teacher; exact: the task's exact flow or denoiser)",
        "  NFE      network evaluations per sample (count)",
        "  qW1      mean |x_(i) − F⁻¹((i + ½)/n)| over the sorted samples of stratified (quantile) latents, "
        f"F of {reference} (x units)",
        f"  W1       Wasserstein-1 distance from samples of random latents to {reference} (x units)",
        f"  KS       Kolmogorov–Smirnov sup |F_n − F| of the same samples against {reference} (0 to 1)",
        f"  NLL      −mean log p(x) of the same samples under {density}, nats per sample (log p floored "
        "at −1000): scores the samples; not the training loss, not the model's own likelihood",
    ]
    if any("W1_holdout" in r for r in rows):
        legend.append(
            "  W1 hold  two-sample Wasserstein-1 from the same samples to the held-out values, never "
            "trained on (x units)"
        )
    return "\n".join(legend)


def format_report(rows: list[dict[str, Any]], user_data: bool = False) -> str:
    """The evaluation table with its column legend below it, for the training report."""
    return f"{format_table(rows)}\n{table_legend(rows, user_data)}"


def format_heldout_likelihood(likelihood: dict[str, Any], count: int) -> str:
    """The training report's held-out likelihood lines, from `train.heldout_log_likelihood`'s dict
    ("model", "density", "kde", and the other baselines' keys) and the number of held-out values
    it averaged over."""
    how = {
        "onestep": "the one-step sampler's own density, by the change of variables of its map",
        "ode": "the PF-ODE's density, by the instantaneous change of variables (RK4)",
    }.get(str(likelihood["density"]), str(likelihood["density"]))
    return (
        f"held-out mean log-likelihood ({count:,} values never trained on; nats per value, higher is "
        f"better): model {likelihood['model']:.4f} ({likelihood['density']} density), "
        f"gaussian_kde (Scott) of the training split {likelihood['kde']:.4f}\n"
        f"  model: mean log p(x) of the held-out x under {how}, the density /logprob serves by default\n"
        f"  {_format_other_baselines(likelihood)}"
    )


def _format_other_baselines(likelihood: dict[str, Any]) -> str:
    """The report's line on the ISJ KDE and the BIC mixture: their scores, why not, or how to get them."""
    if "baselines_missing" in likelihood:
        return "(install '.[baselines]' to compare with ISJ and BIC mixture)"
    parts = []
    for name in HELDOUT_BASELINES:
        label = BASELINES[name].label
        if name == "bic_mixture" and name in likelihood:
            label += f" ({likelihood['bic_mixture_components']} components)"
        if name in likelihood:
            parts.append(f"{label} {likelihood[name]:.4f}")
        else:
            parts.append(f"{label} not fitted ({likelihood.get(f'{name}_error', 'no result')})")
    return "other baselines fitted on the training split: " + ", ".join(parts)


# Baselines besides Scott's KDE in the held-out report (`ctm_core.baselines`), and the most training
# values the mixture's EM sees (rank-evenly spaced; its ten fits would otherwise take minutes).
HELDOUT_BASELINES = ("isj_kde", "bic_mixture")
MIXTURE_MAX_VALUES = 20_000


def heldout_log_likelihood(
    model: CTMParametrization,
    noise: NoiseConfig,
    task: EmpiricalTask,
    holdout: np.ndarray,
    kde: stats.gaussian_kde | None = None,
) -> dict[str, float | int | str]:
    """Mean log p(holdout) under the density /logprob serves by default — the one-step sampler's
    own (`onestep_log_prob`) for a monotone network, else the PF-ODE's — and under a Scott's-rule
    KDE of the training split (`kde`, default: fitted on all of task's values).

    With the baselines extra installed, also under the ISJ KDE ("isj_kde") and the BIC-chosen
    Gaussian mixture ("bic_mixture", "bic_mixture_components") of the training values; a baseline
    that cannot be fitted gives "<name>_error" instead, a missing extra "baselines_missing".
    """
    points = torch.as_tensor(holdout, dtype=torch.float32)
    density = "onestep" if has_onestep_density(model) else "ode"
    logp = density_log_prob(model, points, noise, density)
    if kde is None:
        kde = stats.gaussian_kde(task.values, bw_method="scott")
    result: dict[str, float | int | str] = {
        "model": float(logp.mean()),
        "kde": float(kde.logpdf(holdout).mean()),
        "density": density,
    }
    return result | _other_baselines(task.values, holdout)


def _other_baselines(values: np.ndarray, holdout: np.ndarray) -> dict[str, float | int | str]:
    """Held-out mean log-likelihood of the ISJ KDE and the BIC mixture fitted on `values` (sorted)."""
    result: dict[str, float | int | str] = {}
    for name in HELDOUT_BASELINES:
        fit_values = values
        if name == "bic_mixture" and values.size > MIXTURE_MAX_VALUES:
            fit_values = values[np.linspace(0, values.size - 1, MIXTURE_MAX_VALUES).astype(np.int64)]
        try:
            estimator = fit_baseline(name, fit_values)
        except BaselineUnavailable as exc:
            return {"baselines_missing": str(exc)}
        except ValueError as exc:  # e.g. ISJ finds no bandwidth on a handful of values
            result[f"{name}_error"] = str(exc)
            continue
        result[name] = float(estimator.log_prob(holdout).mean())
        if isinstance(estimator, MixtureEstimator):
            result["bic_mixture_components"] = estimator.components
    return result
