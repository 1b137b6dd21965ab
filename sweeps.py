"""Pieces shared by the resumable experiment drivers (``capacity_sweep.py``, ``mqar/compare.py``,
``text_tasks_experiment.py``, ``recall_sandbox/compare.py``): a CSV of result rows, rewritten atomically
as each run finishes, and the curriculum order of runs over pair counts."""
from __future__ import annotations

import csv
import os
from pathlib import Path

from io_utils import atomic_file


def read_rows(path: str | os.PathLike) -> list[dict]:
    """The rows of a results CSV, as strings (none if it does not exist yet)."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path: str | os.PathLike, rows: list[dict], columns: tuple[str, ...]) -> None:
    """Write every row (missing columns left empty) to a temporary file, then rename it to ``path``."""
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def curriculum_start(pairs: tuple[int, ...], rows: list[dict], run: tuple[str, int, int], run_name,
                     curriculum: bool = True, anchor: int | None = None) -> str | None:
    """Where run ``(model, n_pairs, seed)`` starts: "" (from scratch), the name of the run whose weights it
    starts from, or None while its predecessor has no row yet.

    Under the curriculum each model and seed trains one chain that starts from scratch at the ``anchor`` pair
    count (default: the smallest) and moves outwards one pair count at a time: a run above the anchor starts
    from the next smaller pair count, one below it from the next larger. If that run failed, it starts from
    the last of the chain that trained ("ok"), else from scratch. ``run_name(model, n_pairs, seed)`` names a
    run's folder."""
    name, n, seed = run
    ordered = sorted(pairs)
    anchor = ordered[0] if anchor is None else anchor
    if anchor not in ordered:
        raise ValueError(f"curriculum anchor {anchor} is not one of the pair counts {ordered}: pick one of them.")
    if not curriculum:
        chain = []
    elif n >= anchor:
        chain = [p for p in ordered if anchor <= p < n]  # ascending: the nearest predecessor last
    else:
        chain = [p for p in reversed(ordered) if n < p <= anchor]  # descending: the nearest predecessor last
    finished = {(r["model"], int(r["n_pairs"]), int(r["seed"])): r["status"] for r in rows}
    if chain and (name, chain[-1], seed) not in finished:
        return None
    trained = [p for p in chain if finished.get((name, p, seed)) == "ok"]
    return run_name(name, trained[-1], seed) if trained else ""
