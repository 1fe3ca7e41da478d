"""The paired difference to the baseline over seeds, with its 95 % t-interval."""

import numpy as np

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def paired_difference(values, base):
    """Mean and 95 % t-interval half-width of the per-seed differences (runs paired by seed)."""
    d = 100 * (np.asarray(values) - np.asarray(base))
    if len(d) < 2:
        return d.mean(), float("nan")
    return d.mean(), T_975.get(len(d) - 1, 1.96) * d.std(ddof=1) / np.sqrt(len(d))


def format_difference(mean, half, digits=1):
    """``+0.2 ± 0.5``; with one seed there is no interval: ``+0.0 (1 seed, no interval)``, never ``± nan``."""
    if np.isnan(half):
        return f"{mean:+.{digits}f} (1 seed, no interval)"
    return f"{mean:+.{digits}f} ± {half:.{digits}f}"
