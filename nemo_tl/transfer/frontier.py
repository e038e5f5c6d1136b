"""Metrics of the forgetting trade-off: the Pareto front of (source, target) error rates, and CL-MASR's
continual-learning metrics over a sequence of languages (Della Libera et al. 2023, arXiv 2310.16931).

All error rates are percentages, lower is better. In a sequence of languages 0, 1, ..., T the
error matrix ``R[k][j]`` is the error rate on language ``j`` after training step ``k`` (``j ≤ k``;
step 0 is the base model, trained on language 0). After step ``k``:

- average error  A_k = (1 / (k+1)) Σ_{j≤k} R[k][j]
- backward transfer  BWT_k = (1 / k) Σ_{j<k} (R[j][j] − R[k][j])   (negative: forgetting)
- forward transfer  FWT_k = R*_k − R[k][k], with R*_k the error of the base fine-tuned on language
  ``k`` alone (positive: what the languages learnt before help the new one)

as CL-MASR's ``analyze_logs.py`` computes them (there on WER).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["continual_metrics", "meets_goal", "pareto_optimal"]


def pareto_optimal(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which points no other point dominates (both coordinates minimized).

    Point ``p`` is dominated by ``q`` when ``q`` is no worse in both coordinates and better in one.
    Equal points do not dominate each other (both stay on the front).

    Args:
        points: ``(source error, target error)`` per point, N of them.
    Returns:
        N booleans, True for the Pareto-optimal points.
    """
    points = [(float(a), float(b)) for a, b in points]
    out = []
    for i, (a, b) in enumerate(points):
        dominated = any(
            c <= a and d <= b and (c < a or d < b) for j, (c, d) in enumerate(points) if j != i
        )
        out.append(not dominated)
    return out


def continual_metrics(errors: Sequence[Sequence[float]], single_task: Sequence[float] | None = None) -> list[dict]:
    """CL-MASR's metrics after each step of a language sequence (see the module docstring).

    Args:
        errors: the lower-triangular error matrix, row ``k`` holding ``k + 1`` error rates
            ``R[k][0..k]`` (T+1 rows; row 0 is the base on its own language).
        single_task: ``R*_k`` for k = 1..T: the base fine-tuned on language ``k`` alone (T values);
            None leaves FWT out.
    Returns:
        One dict per step ``k``: ``{"step": k, "avg": A_k, "bwt": BWT_k, "fwt": FWT_k}`` with
        ``bwt`` and ``fwt`` None at step 0 (and ``fwt`` None without ``single_task``).
    Raises:
        ValueError: a row of the wrong length, or ``single_task`` of the wrong length.
    """
    rows = [list(map(float, row)) for row in errors]
    for k, row in enumerate(rows):
        if len(row) != k + 1:
            raise ValueError(
                f"row {k} of the error matrix has {len(row)} entries; expected {k + 1} (languages 0..{k})"
            )
    if single_task is not None and len(single_task) != len(rows) - 1:
        raise ValueError(
            f"single_task has {len(single_task)} entries; expected {len(rows) - 1} (steps 1..{len(rows) - 1})"
        )
    out = []
    for k, row in enumerate(rows):
        step = {"step": k, "avg": sum(row) / len(row), "bwt": None, "fwt": None}
        if k > 0:
            step["bwt"] = sum(rows[j][j] - row[j] for j in range(k)) / k
            if single_task is not None:
                step["fwt"] = float(single_task[k - 1]) - row[k]
        out.append(step)
    return out


def meets_goal(source: float, target: float, base_source: float, target_only: float, *,
               source_factor: float = 1.20, target_factor: float = 1.05) -> bool:
    """Whether a point keeps the source within ``source_factor`` × the base's error and reaches the
    target within ``target_factor`` × the target-only fine-tuning's error (issue 19's goal)."""
    return source <= source_factor * base_source and target <= target_factor * target_only
