"""The smallest noise level for a user's data: a Gaussian KDE bandwidth chosen by likelihood
cross-validation (Habbema, Hermans & van den Broek 1974; Duin 1976) on dequantised values.

The flow's marginal at σ is the data convolved with N(0, σ²). For a finite sample that marginal
is exactly a Gaussian KDE of bandwidth σ, so stopping the flow at σ_min = h serves the sample's
KDE of bandwidth h: the noise range itself is the smoothing. At σ_min ≈ 0 the target would be the
sample's own atoms, which a few hundred values (often rounded, so with many ties) cannot pin down.

Rounded values are dequantised first (Theis et al. 2016): each moves by U(−δ/2, δ/2), δ the
smallest gap between distinct values. Without it, leave-one-out on data with many ties rewards a
density of spikes at the rounding grid (the copies left in vouch for the one left out).
"""

import numpy as np

# At most this many values enter the O(m²) cross-validation; a larger sample is subsampled and its
# bandwidth rescaled by (m/n)^(1/5), the rate at which a KDE's optimal bandwidth shrinks with n.
MAX_VALUES = 1_000
# The bandwidths tried, as multiples of Scott's rule with a robust scale (`_reference_bandwidth`).
_FACTORS = np.geomspace(0.02, 3.0, 48)
# A value far from all others scores this floor at every h, so it cannot decide h.
_FLOOR = 1e-300


def scott_bandwidth(values: np.ndarray) -> float:
    """Scott's rule for a Gaussian KDE, 1.059·sd·n^(−1/5) (Scott 1992, eq. 6.42)."""
    return _scott_rule(float(np.std(values, ddof=1)), values.size)


def cv_bandwidth(values: np.ndarray, seed: int = 0, population: int | None = None) -> float | None:
    """The Gaussian KDE bandwidth h maximising the leave-one-out log-likelihood
    Σ_i log[Σ_{j≠i} φ_h(x_i − x_j) / (m − 1)] of the dequantised values.

    None when the sample has fewer than three distinct values (no bandwidth can be judged).
    Searched on a log grid of 0.02–3 × Scott's rule (robust scale); a sample larger than
    `MAX_VALUES` is judged on a seeded subsample of that size and the result rescaled to its size
    (or to `population`, when `values` are already a sample of a larger set).
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    values = values[np.isfinite(values)]
    n = population or values.size
    rng = np.random.default_rng(seed)
    if values.size > MAX_VALUES:
        values = rng.choice(values, MAX_VALUES, replace=False)
    distinct = np.unique(values)
    if distinct.size < 3:
        return None
    delta = float(np.diff(distinct).min())
    values = values + rng.uniform(-delta / 2, delta / 2, values.size)
    m = values.size
    gaps_sq = (values[:, None] - values[None, :]) ** 2
    np.fill_diagonal(gaps_sq, np.inf)  # leave each value out of its own estimate
    normaliser = (m - 1) * np.sqrt(2 * np.pi)
    best_h, best_score = 0.0, -np.inf
    for h in _reference_bandwidth(values) * _FACTORS:
        density = np.exp(-0.5 * gaps_sq / h**2).sum(axis=1) / (normaliser * h)
        score = float(np.log(np.maximum(density, _FLOOR)).sum())
        if score > best_score:
            best_h, best_score = float(h), score
    return best_h * (m / n) ** 0.2


def _reference_bandwidth(values: np.ndarray) -> float:
    """Silverman's robust scale min(sd, IQR/1.349) in Scott's rule: the centre of the search, so
    that one wild value, which inflates the sd, does not move the whole grid."""
    q75, q25 = np.percentile(values, [75, 25])
    spread = np.std(values, ddof=1)
    robust = min(spread, (q75 - q25) / 1.349) if q75 > q25 else spread
    return _scott_rule(robust, values.size)


def _scott_rule(scale: float, n: int) -> float:
    return float(1.059 * scale * n ** (-0.2))
