"""Summary statistics of the evaluation: mean/std over seeds, correlation with a permutation p-value and a
bootstrap interval, and the gain over the untrained target."""

from __future__ import annotations

import math
import random

from ..configs.evaluate import LOWER_IS_BETTER
from ..stats import pearson, spearman


def summary_stats(values: list[float]) -> dict:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0, "values": values}
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(vals), "max": max(vals), "n": len(vals), "values": values}


def correlation(x: list[float], y: list[float], *, permutations: int = 10000, seed: int = 0,
                bootstrap: int = 2000) -> dict:
    """Pearson r, Spearman rho, a two-sided permutation p-value of r, and a 95% percentile bootstrap interval
    of r over (x, y) pairs resampled with replacement (no scipy needed)."""
    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    xs, ys = [a for a, _ in pairs], [b for _, b in pairs]
    r = pearson(xs, ys)
    out = {"n": len(pairs), "pearson_r": r, "spearman_rho": spearman(xs, ys) if r is not None else None,
           "p_permutation": None}
    if r is not None:
        rng = random.Random(seed)
        yy = list(ys)
        hits = 0
        for _ in range(permutations):
            rng.shuffle(yy)
            rp = pearson(xs, yy)
            hits += rp is not None and abs(rp) >= abs(r) - 1e-12
        out["p_permutation"] = (hits + 1) / (permutations + 1)
        boot = []
        for _ in range(bootstrap):
            idx = [rng.randrange(len(xs)) for _ in xs]
            rb = pearson([xs[i] for i in idx], [ys[i] for i in idx])
            if rb is not None:
                boot.append(rb)
        boot.sort()
        out["pearson_ci95"] = ([boot[int(0.025 * (len(boot) - 1))], boot[int(0.975 * (len(boot) - 1))]]
                               if len(boot) >= 20 else None)
    return out


def gain(metric: str, value, base) -> float | None:
    if value is None or base is None:
        return None
    return (base - value) if LOWER_IS_BETTER[metric] else (value - base)
