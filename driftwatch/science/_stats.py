"""Row-wise robust statistics without numpy's per-row Python loop (``nanmedian(axis=1)``)."""

from __future__ import annotations

import numpy as np

__all__ = ["row_nanmedian", "row_mad_std"]


def row_nanmedian(v: np.ndarray) -> np.ndarray:
    """Median of the finite values of each row of a 2-D array (NaN for an empty row).

    One sort of the whole array (NaNs sort last), then the middle element(s) of each row's
    finite part are picked by index.
    """
    v = np.asarray(v, dtype=float)
    n = np.isfinite(v).sum(axis=1)
    s = np.sort(v, axis=1)
    rows = np.arange(v.shape[0])
    lo = np.clip((n - 1) // 2, 0, max(v.shape[1] - 1, 0))
    hi = np.clip(n // 2, 0, max(v.shape[1] - 1, 0))
    if v.shape[1] == 0:
        return np.full(v.shape[0], np.nan)
    med = 0.5 * (s[rows, lo] + s[rows, hi])
    return np.where(n > 0, med, np.nan)


def row_mad_std(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (median, 1.4826 x MAD) of the finite values of each row."""
    med = row_nanmedian(v)
    return med, 1.4826 * row_nanmedian(np.abs(v - med[:, None]))
