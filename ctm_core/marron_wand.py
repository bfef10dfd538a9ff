"""The 15 normal-mixture test densities of Marron & Wand (1992), Table 1, as exact tasks.

J. S. Marron and M. P. Wand, "Exact mean integrated squared error", Annals of Statistics 20(2),
712–736. Each density is Σ_k w_k N(μ_k, σ_k²); the paper writes the components as N(μ, σ²), so
the standard deviations below are the σ of its formulas (never σ²). These are benchmark targets
(`python -m benchmarks.density`); `ctm_core.tasks.get_task` finds them by name, but the shipped
set (`TASKS`, what `--task all` trains) does not include them.
"""

from ctm_core.tasks import GaussianMixture, Task


def _mixture(name: str, paper_name: str, components: list[tuple[float, float, float]]) -> GaussianMixture:
    """A mixture from (weight, mean, std) triples, described by the paper's name and number."""
    weights, means, stds = (list(column) for column in zip(*components, strict=True))
    number = int(name[2:4])
    description = f"Marron & Wand (1992) density #{number}: {paper_name}"
    return GaussianMixture(name, weights, means, stds, description=description)


def _densities() -> list[GaussianMixture]:
    """Table 1 of the paper, in its order; each comment is the paper's formula (ell is its l)."""
    return [
        # N(0, 1)
        _mixture("mw01_gaussian", "Gaussian", [(1.0, 0.0, 1.0)]),
        # 1/5 N(0, 1) + 1/5 N(1/2, (2/3)²) + 3/5 N(13/12, (5/9)²)
        _mixture(
            "mw02_skewed_unimodal",
            "Skewed unimodal",
            [(1 / 5, 0.0, 1.0), (1 / 5, 1 / 2, 2 / 3), (3 / 5, 13 / 12, 5 / 9)],
        ),
        # Σ_{l=0}^{7} 1/8 N(3((2/3)^l − 1), (2/3)^{2l})
        _mixture(
            "mw03_strongly_skewed",
            "Strongly skewed",
            [(1 / 8, 3 * ((2 / 3) ** ell - 1), (2 / 3) ** ell) for ell in range(8)],
        ),
        # 2/3 N(0, 1) + 1/3 N(0, (1/10)²)
        _mixture("mw04_kurtotic_unimodal", "Kurtotic unimodal", [(2 / 3, 0.0, 1.0), (1 / 3, 0.0, 1 / 10)]),
        # 1/10 N(0, 1) + 9/10 N(0, (1/10)²)
        _mixture("mw05_outlier", "Outlier", [(1 / 10, 0.0, 1.0), (9 / 10, 0.0, 1 / 10)]),
        # 1/2 N(−1, (2/3)²) + 1/2 N(1, (2/3)²)
        _mixture("mw06_bimodal", "Bimodal", [(1 / 2, -1.0, 2 / 3), (1 / 2, 1.0, 2 / 3)]),
        # 1/2 N(−3/2, (1/2)²) + 1/2 N(3/2, (1/2)²)
        _mixture(
            "mw07_separated_bimodal", "Separated bimodal", [(1 / 2, -3 / 2, 1 / 2), (1 / 2, 3 / 2, 1 / 2)]
        ),
        # 3/4 N(0, 1) + 1/4 N(3/2, (1/3)²)
        _mixture("mw08_skewed_bimodal", "Skewed bimodal", [(3 / 4, 0.0, 1.0), (1 / 4, 3 / 2, 1 / 3)]),
        # 9/20 N(−6/5, (3/5)²) + 9/20 N(6/5, (3/5)²) + 1/10 N(0, (1/4)²)
        _mixture(
            "mw09_trimodal",
            "Trimodal",
            [(9 / 20, -6 / 5, 3 / 5), (9 / 20, 6 / 5, 3 / 5), (1 / 10, 0.0, 1 / 4)],
        ),
        # 1/2 N(0, 1) + Σ_{l=0}^{4} 1/10 N(l/2 − 1, (1/10)²)
        _mixture(
            "mw10_claw", "Claw", [(1 / 2, 0.0, 1.0)] + [(1 / 10, ell / 2 - 1, 1 / 10) for ell in range(5)]
        ),
        # 49/100 N(−1, (2/3)²) + 49/100 N(1, (2/3)²) + Σ_{l=0}^{6} 1/350 N((l − 3)/2, (1/100)²)
        _mixture(
            "mw11_double_claw",
            "Double claw",
            [(49 / 100, -1.0, 2 / 3), (49 / 100, 1.0, 2 / 3)]
            + [(1 / 350, (ell - 3) / 2, 1 / 100) for ell in range(7)],
        ),
        # 1/2 N(0, 1) + Σ_{l=−2}^{2} (2^{1−l}/31) N(l + 1/2, (2^{−l}/10)²)
        _mixture(
            "mw12_asymmetric_claw",
            "Asymmetric claw",
            [(1 / 2, 0.0, 1.0)]
            + [(2 ** (1 - ell) / 31, ell + 1 / 2, 2.0**-ell / 10) for ell in range(-2, 3)],
        ),
        # Σ_{l=0}^{1} 46/100 N(2l − 1, (2/3)²) + Σ_{l=1}^{3} 1/300 N(−l/2, (1/100)²)
        #   + Σ_{l=1}^{3} 7/300 N(l/2, (7/100)²)
        _mixture(
            "mw13_asymmetric_double_claw",
            "Asymmetric double claw",
            [(46 / 100, 2 * ell - 1, 2 / 3) for ell in range(2)]
            + [(1 / 300, -ell / 2, 1 / 100) for ell in range(1, 4)]
            + [(7 / 300, ell / 2, 7 / 100) for ell in range(1, 4)],
        ),
        # Σ_{l=0}^{5} (2^{5−l}/63) N((65 − 96(1/2)^l)/21, (32/63)²/2^{2l})
        _mixture(
            "mw14_smooth_comb",
            "Smooth comb",
            [(2 ** (5 - ell) / 63, (65 - 96 * 0.5**ell) / 21, (32 / 63) / 2**ell) for ell in range(6)],
        ),
        # Σ_{l=0}^{2} 2/7 N((12l − 15)/7, (2/7)²) + Σ_{l=8}^{10} 1/21 N(2l/7, (1/21)²)
        _mixture(
            "mw15_discrete_comb",
            "Discrete comb",
            [(2 / 7, (12 * ell - 15) / 7, 2 / 7) for ell in range(3)]
            + [(1 / 21, 2 * ell / 7, 1 / 21) for ell in range(8, 11)],
        ),
    ]


MARRON_WAND: dict[str, Task] = {task.name: task for task in _densities()}
