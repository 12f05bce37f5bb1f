"""Trajectory metrics with one definition each (docs/report-format.md: keys and definitions).

Per sample, for the most likely mode: ``ade`` (mean L2 over the horizon), ``fde`` (L2 at the last
point), ``l2_Ns`` (L2 *at* time N s, UniAD's convention) and ``l2_avg_Ns`` (L2 *averaged over all
points up to* N s, ST-P3's and VAD's convention); over all K
modes: ``min_ade_k``, ``min_fde_k``; ``miss_rate``: share of samples whose most likely mode ends
more than 2 m away. Values are metres. Per-sample rows are kept so that results can be gathered
across ranks before averaging and do not depend on world size: validation gathers the rows of every
rank, drops padding, and sorts them by :func:`window_key` so that even the order of summation is the
same on any number of ranks.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

import numpy as np
import torch

from fsdtrain.errors import DataError

__all__ = ["METRIC_KEYS", "MISS_THRESHOLD_M", "sample_errors", "stable_key", "MetricTable"]

MISS_THRESHOLD_M = 2.0
_TIMES_S = (1, 2, 3)
METRIC_KEYS = (
    "ade", "fde", "l2_1s", "l2_2s", "l2_3s", "l2_avg_1s", "l2_avg_2s", "l2_avg_3s", "min_ade_k", "min_fde_k", "miss_rate",
)  # fmt: skip


@torch.no_grad()
def sample_errors(traj: torch.Tensor, logits: torch.Tensor, target: torch.Tensor, future_hz: float) -> np.ndarray:
    """Per-sample metric values, columns in :data:`METRIC_KEYS` order.

    Args:
        traj: [B, K, S, 3] predicted modes; logits: [B, K]; target: [B, S, 3].
        future_hz: rate of the S points (point ``i`` is at ``(i + 1) / future_hz`` s).

    Returns:
        float64 [B, len(METRIC_KEYS)]; a time beyond the horizon gives NaN.
    """
    err = (traj[..., :2] - target[:, None, :, :2]).norm(dim=-1).double()  # [B, K, S]
    top = logits.argmax(dim=1)
    e = err[torch.arange(err.shape[0]), top]  # [B, S]
    S = e.shape[1]
    cols = [e.mean(1), e[:, -1]]
    at = []
    avg = []
    for t in _TIMES_S:
        n = int(round(t * future_hz))
        nan = torch.full_like(e[:, 0], float("nan"))
        at.append(e[:, n - 1] if 1 <= n <= S else nan)
        avg.append(e[:, :n].mean(1) if 1 <= n <= S else nan)
    cols += at + avg
    cols += [err.mean(2).min(1).values, err[:, :, -1].min(1).values, (e[:, -1] > MISS_THRESHOLD_M).double()]
    return torch.stack(cols, dim=1).cpu().numpy()


_EVERY_POINT = (METRIC_KEYS.index("ade"), METRIC_KEYS.index("min_ade_k"))  # columns over every point of every mode


def stable_key(text: str) -> int:
    """A signed 64-bit key of ``text``, the same in every process and run (unlike ``hash``), so that
    int64 tensors can carry clip and window identities through a gather."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little", signed=True)


class MetricTable:
    """Per-sample rows grouped by (country, predictor), averaged on demand."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)

    def add(self, countries: list[str], predictor: str, errors: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Adds the rows of :func:`sample_errors` (where ``mask``); a non-finite ``ade`` or ``min_ade_k`` (NaN or
        inf anywhere in a window's predictions or ground truth) is a one-line DataError naming the metric."""
        for i, c in enumerate(countries):
            if mask is None or mask[i]:
                for col in _EVERY_POINT:
                    if not np.isfinite(errors[i, col]):
                        raise DataError(
                            f"non-finite {METRIC_KEYS[col]} ({errors[i, col]}) of predictor {predictor!r} on a {c} window: its "
                            "predictions or ground truth hold NaN or inf; check the weights (finite?) and the data (`fsdtrain data verify`)"
                        )
                self.rows[(c, predictor)].append(errors[i])

    def countries(self) -> list[str]:
        return sorted({c for c, _ in self.rows})

    def predictors(self, country: str | None = None) -> list[str]:
        return sorted({p for c, p in self.rows if country is None or c == country})

    def count(self, country: str | None, predictor: str) -> int:
        return sum(len(v) for (c, p), v in self.rows.items() if p == predictor and (country is None or c == country))

    def summary(self, country: str | None, predictor: str, *, digits: int | None = 4) -> dict[str, float | None]:
        """Mean of each metric over the samples of one country (or all, for None), rounded to
        ``digits`` decimals (None: full precision); None for a time beyond the horizon, the only
        metric that may not be a number (a mean that is not finite is a one-line DataError)."""
        rows = [r for (c, p), v in self.rows.items() if p == predictor and (country is None or c == country) for r in v]
        if not rows:
            return {}
        stacked = np.stack(rows)
        with np.errstate(over="ignore", invalid="ignore"):  # an overflowing mean is reported below, not warned about
            mean = np.mean(stacked, axis=0)
        out: dict[str, float | None] = {}
        for j, (key, value) in enumerate(zip(METRIC_KEYS, mean)):
            if np.isnan(stacked[:, j]).all():  # only a time beyond the horizon is NaN in every row (add checked the rest)
                out[key] = None
            elif not np.isfinite(value):
                where = "all countries" if country is None else country
                raise DataError(f"metric {key} of predictor {predictor!r} on {where} is {value} (not finite): values too large to average; check the data")
            else:
                out[key] = float(value) if digits is None else round(float(value), digits)
        return out
