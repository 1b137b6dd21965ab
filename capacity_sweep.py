"""Capacity sweep: GradMem (second order, several K and inner optimisers), RMT and the full-context
transformer over a range of pair counts and seeds, with test-time extrapolation (K_test = 1 .. 2 K_train)
for GradMem.

Each model gets the budget it needs: a run trains until its validation exact match reaches
``stop_at_exact_match``, or has not improved for ``patience`` validations, or reaches the step or time cap;
its row records the steps, why it stopped and the training time.

Every run trains through its ``run_*.py`` script (single-threaded, ``parallel`` at a time), then is
evaluated on the test split; each evaluation is a row of ``results/capacity.csv``. The sweep is
resumable: a run with rows in the CSV is skipped, and an interrupted run resumes from its checkpoint.
A failed or diverged run is a row with its status. With ``retry_anchor``, a chain whose first run (at the
curriculum anchor) stopped short of the target trains that pair count once more, from the next smaller
pair count's weights; the tables and plots use a run's last attempt. ``plot_capacity`` and
``plot_k_extrapolation`` draw the figures from the CSV alone.

    python capacity_sweep.py --help          # scripts/capacity_sweep.sh sets the scale from the environment
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import time
import typing
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from cli import add_config_args, config_from_args, option
from io_utils import atomic_file
from sweeps import curriculum_start, read_rows, write_rows

ROOT = Path(__file__).resolve().parent
COLUMNS = ("model", "n_pairs", "n_mem_tokens", "K_train", "K_test", "seed", "attempt", "exact_match", "token_accuracy",
           "steps", "stopped", "train_time_s", "wall_time_s", "status", "init_from")


@dataclass
class SweepConfig:
    out_dir: str = option("results", "folder for capacity.csv and the plots")
    runs_dir: str = option("runs/sweep", "folder for the training runs")
    models: tuple[str, ...] = option(("gradmem_k2", "gradmem_k3", "rmt", "full_context"),
                                     "models: gradmem_k<K> (second order, inner_optimizer at inner_lr), "
                                     "gradmem_sgd_k<K> (second order, inner SGD at sgd_inner_lr), rmt, full_context")
    pairs: tuple[int, ...] = option((1, 2, 4, 8), "pair counts")
    seeds: tuple[int, ...] = option((0, 1, 2), "seeds")
    n_mem_tokens: int = option(4, "memory vectors of GradMem and RMT")
    n_layer: int = option(2, "backbone layers")
    n_head: int = option(4, "backbone heads")
    n_embd: int = option(64, "backbone width")
    key_len: int = option(1, "characters per key")
    value_len: int = option(1, "characters per value")
    vocab_size: int = option(16, "key/value alphabet")
    key_value_separator: bool = option(True, "':' between key and value, as in the paper ('!k:v!'); without it "
                                             "('!kv!') binding needs no previous-token mechanism")
    inner_optimizer: str = option("adam", "GradMem's inner-loop update rule (with adam use K >= 2: a single Adam "
                                          "step is a sign step that passes almost no gradient through WRITE)")
    inner_lr: float = option(0.5, "GradMem's inner-loop learning rate")
    sgd_inner_lr: float = option(1.0, "inner learning rate of the gradmem_sgd_k<K> models")
    n_train: int = option(200_000, "training samples (generated in memory per run)")
    n_valid: int = option(500, "validation and test samples")
    learning_rate: float = option(1e-3, "outer learning rate")
    batch_size: int = option(32, "training samples per step")
    max_steps: int = option(4000, "optimizer steps per run at most (the same cap for every model)")
    max_train_minutes: float = option(15.0, "training time per run at most")
    eval_steps: int = option(500, "validation every N steps")
    stop_at_exact_match: float = option(0.99, "a run stops once validation exact match reaches this")
    patience: int | None = option(None, "a run stops after this many validations without a better exact match "
                                        "(with the caps above, each model trains until it stops improving)")
    curriculum: bool = option(True, "start each run from the best weights of the same model and seed at the "
                                    "next smaller pair count (runs of one chain go in order of pairs)")
    curriculum_anchor: int | None = option(None, "pair count where each curriculum chain starts from scratch "
                                                 "(default: the smallest); runs below it start from the next "
                                                 "larger pair count")
    retry_anchor: bool = option(False, "a chain whose anchor run stops short of stop_at_exact_match trains the "
                                       "anchor's pair count once more after the next smaller one, starting from "
                                       "that run's best weights (e.g. full_context.retry_anchor=true: a seed "
                                       "that stayed on the induction plateau at the anchor may bind with fewer "
                                       "pairs and carry that up); the tables report the last attempt")
    model_overrides: tuple[str, ...] = option((), "settings of single models, as model.field=value, e.g. "
                                                  "full_context.curriculum_anchor=8 (a full-context transformer "
                                                  "learns its induction mechanism most readily at a middle pair "
                                                  "count) or full_context.patience=40; the field is any training "
                                                  "setting of this config")
    parallel: int = option(2, "runs at a time, one thread each")
    report_only: bool = option(False, "train nothing: redraw the plots and tables from the CSV (e.g. of an "
                                      "interrupted sweep)")

    def __post_init__(self):
        if self.curriculum_anchor is not None and self.curriculum_anchor not in self.pairs:
            raise ValueError(f"curriculum_anchor={self.curriculum_anchor} is not one of the pair counts "
                             f"{list(self.pairs)}: pick one of them or leave it unset.")
        if self.retry_anchor and not (self.curriculum and self.curriculum_anchor not in (None, min(self.pairs))):
            raise ValueError("retry_anchor retrains the anchor from the next smaller pair count, so it needs the "
                             "curriculum and a curriculum_anchor above the smallest pair count: set one (e.g. "
                             "full_context.curriculum_anchor=8) or drop retry_anchor.")
        for name in self.models:
            self.for_model(name)  # a bad override fails here, before any run

    def for_model(self, name: str) -> "SweepConfig":
        """This config with the ``model_overrides`` of model ``name`` applied."""
        hints = typing.get_type_hints(SweepConfig)
        changes = {}
        for entry in self.model_overrides:
            target, _, value = entry.partition("=")
            model, _, field = target.partition(".")
            if not value or field not in hints or field in _NOT_PER_MODEL:
                settable = sorted(set(hints) - _NOT_PER_MODEL)
                raise ValueError(f"model_overrides entry {entry!r} is not model.field=value with a field of "
                                 f"{settable}: write it as e.g. full_context.patience=40.")
            if model not in self.models:
                raise ValueError(f"model_overrides entry {entry!r} names {model!r}, which is not one of the "
                                 f"models {list(self.models)}.")
            if model == name:
                changes[field] = _parse_setting(value, hints[field], entry)
        return dataclasses.replace(self, model_overrides=(), **changes) if changes else self


# fields that describe the whole sweep rather than how one run trains
_NOT_PER_MODEL = {"out_dir", "runs_dir", "models", "pairs", "seeds", "model_overrides", "parallel", "report_only"}


def _parse_setting(value: str, tp, entry: str):
    """``value`` as the type of the field it sets (``int | None`` as int, "true"/"false" for a bool)."""
    kinds = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    kind = kinds[0]
    if kind is bool:
        if value.lower() not in ("true", "false"):
            raise ValueError(f"model_overrides entry {entry!r}: write the setting as true or false.")
        return value.lower() == "true"
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"model_overrides entry {entry!r}: cannot read {value!r} as {kind.__name__}.") from None


def model_flags(name: str, cfg: SweepConfig) -> tuple[str, list[str], int | None]:
    """(run script, its model flags, K_train or None) for a sweep model name."""
    gradmem = re.fullmatch(r"gradmem_(sgd_)?k([1-9][0-9]*)", name)
    if gradmem:
        K = int(gradmem[2])
        optimizer, lr = ("sgd", cfg.sgd_inner_lr) if gradmem[1] else (cfg.inner_optimizer, cfg.inner_lr)
        return ("run_gradmemgpt_on_kv_retrieval.py",
                ["--grad_mode", "second", "--K", str(K), "--inner_optimizer", optimizer, "--inner_lr", str(lr),
                 "--n_mem_tokens", str(cfg.n_mem_tokens)], K)
    if name == "rmt":
        return "run_rmt_on_kv_retrieval.py", ["--mem_proj_mode", "proj", "--n_mem_tokens", str(cfg.n_mem_tokens)], None
    if name == "full_context":
        return "run_gpt2_on_kv_retrieval.py", [], None
    raise ValueError(f"unknown sweep model {name!r}: use gradmem_k<K>, gradmem_sgd_k<K>, rmt or full_context.")


def run_dir(cfg: SweepConfig, name: str, n_pairs: int, seed: int, attempt: int = 1) -> Path:
    return Path(cfg.runs_dir) / f"{name}_N{n_pairs}_s{seed}{'_retry' if attempt > 1 else ''}"


def child_command(name: str, n_pairs: int, seed: int, cfg: SweepConfig, init_from: str = "",
                  attempt: int = 1) -> list[str]:
    """The command line that trains one run (from the best weights of run ``init_from``, if given)."""
    cfg = cfg.for_model(name)
    script, flags, _ = model_flags(name, cfg)
    cmd = [sys.executable, str(ROOT / script), *flags, "--exp_path", str(run_dir(cfg, name, n_pairs, seed, attempt)),
           "--seed", str(seed), "--n_layer", str(cfg.n_layer), "--n_head", str(cfg.n_head), "--n_embd", str(cfg.n_embd),
           "--task_n_pairs", str(n_pairs), "--task_key_len", str(cfg.key_len), "--task_value_len", str(cfg.value_len),
           "--task_vocab_size", str(cfg.vocab_size),
           "--task_key_value_separator" if cfg.key_value_separator else "--no-task_key_value_separator",
           "--task_n_train", str(cfg.n_train), "--task_n_valid", str(cfg.n_valid),
           "--learning_rate", str(cfg.learning_rate), "--warmup_steps", "100", "--max_steps", str(cfg.max_steps),
           "--per_device_batch_size", str(cfg.batch_size), "--stop_at_exact_match", str(cfg.stop_at_exact_match),
           "--max_train_minutes", str(cfg.max_train_minutes), "--eval_steps", str(cfg.eval_steps),
           "--eval_batch_size", str(cfg.n_valid), "--no-show_progress"]
    if cfg.patience:
        cmd += ["--early_stopping_patience", str(cfg.patience)]
    if init_from:
        cmd += ["--init_checkpoint", str(Path(cfg.runs_dir) / init_from / "best")]
    return cmd


def run_one(name: str, n_pairs: int, seed: int, cfg: SweepConfig, init_from: str = "", attempt: int = 1) -> list[dict]:
    """Train one run (resuming if it was interrupted; from the weights of run ``init_from`` if given),
    evaluate it, return its CSV rows."""
    cfg = cfg.for_model(name)
    _, _, K = model_flags(name, cfg)
    exp = run_dir(cfg, name, n_pairs, seed, attempt)
    exp.mkdir(parents=True, exist_ok=True)
    base = {"model": name, "n_pairs": n_pairs, "n_mem_tokens": "" if name == "full_context" else cfg.n_mem_tokens,
            "K_train": K if K is not None else "", "seed": seed, "attempt": attempt, "init_from": init_from}
    t0 = time.perf_counter()
    with open(exp / "log.txt", "a") as log:
        proc = subprocess.run(child_command(name, n_pairs, seed, cfg, init_from, attempt), cwd=ROOT, stdout=log,
                              stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    wall = round(time.perf_counter() - t0, 1)
    if proc.returncode:
        tail = (exp / "log.txt").read_text().strip().splitlines()[-1:] or ["no output"]
        status = "diverged" if _stopped_on_nonfinite_steps(exp) else f"failed (exit {proc.returncode}): {tail[0][:200]}"
        return [{**base, "K_test": "", "exact_match": "nan", "token_accuracy": "nan", "steps": "", "stopped": "",
                 "train_time_s": "", "wall_time_s": wall, "status": status}]
    from evaluate import run_evaluation

    state = json.loads((exp / "checkpoint" / "trainer_state.json").read_text())
    budget = {"steps": state["step"], "stopped": state["stopped"], "train_time_s": round(state["train_seconds"], 1)}
    rows = []
    for k_test in (range(1, 2 * K + 1) if K is not None else [None]):
        r, _ = run_evaluation(exp, split="test", K=k_test, generate=False)
        status = "ok" if math.isfinite(r["loss"]) else "diverged"
        rows.append({**base, "K_test": k_test if k_test is not None else "", "exact_match": round(r["exact_match"], 4),
                     "token_accuracy": round(r["token_accuracy"], 4), **budget, "wall_time_s": wall, "status": status})
    return rows


def _stopped_on_nonfinite_steps(exp: Path) -> bool:
    """Whether training stopped because too many steps in a row had a non-finite loss or gradient (it saves
    a checkpoint whose trainer state counts them, then exits with an error)."""
    state, config = exp / "checkpoint" / "trainer_state.json", exp / "config.json"
    if not (state.is_file() and config.is_file()):
        return False
    limit = json.loads(config.read_text())["train"]["max_nonfinite_in_row"]
    return json.loads(state.read_text())["nonfinite_in_row"] >= limit


def _attempt(row: dict) -> int:
    return int(row.get("attempt") or 1)  # CSVs from before retries have no such column


def _run_key(row: dict) -> tuple[str, int, int]:
    return row["model"], int(row["n_pairs"]), int(row["seed"])


def last_attempts(rows: list[dict]) -> list[dict]:
    """The rows of each run's last attempt (a retry supersedes the first attempt at the anchor)."""
    last = {}
    for r in rows:
        last[_run_key(r)] = max(last.get(_run_key(r), 1), _attempt(r))
    return [r for r in rows if _attempt(r) == last[_run_key(r)]]


def _next_smaller(pairs: tuple[int, ...], n: int) -> int:
    return max(p for p in pairs if p < n)


def _short_of_target(row: dict) -> bool:
    """Whether a run stopped before its validation exact match reached the target (or failed)."""
    return row["stopped"] != "target_exact_match"


def _retry_due(cfg: SweepConfig, rows: list[dict], name: str, seed: int) -> tuple[str, int, int, int] | None:
    """The anchor's retry of chain (``name``, ``seed``) if it is due now: the first attempt at the anchor
    stopped short of the target, the next smaller pair count has trained, and no retry has a row yet."""
    own = cfg.for_model(name)
    if not own.retry_anchor:
        return None
    anchor = own.curriculum_anchor
    by_attempt = {(_run_key(r), _attempt(r)): r for r in rows}
    first = by_attempt.get(((name, anchor, seed), 1))
    if first is None or not _short_of_target(first) or ((name, anchor, seed), 2) in by_attempt:
        return None
    below = by_attempt.get(((name, _next_smaller(cfg.pairs, anchor), seed), 1))
    return (name, anchor, seed, 2) if below is not None and below["status"] == "ok" else None


def _init_from(cfg: SweepConfig, rows: list[dict], run: tuple[str, int, int], attempt: int = 1) -> str | None:
    """Where a run starts (see ``curriculum_start``); a retry starts from the next smaller pair count, and
    a run just above the anchor waits for the anchor's retry, if one is due, and starts from it."""
    name, n, seed = run
    own = cfg.for_model(name)
    if attempt > 1:
        return run_dir(cfg, name, _next_smaller(cfg.pairs, n), seed).name
    first_attempts = [r for r in rows if _attempt(r) == 1]
    start = curriculum_start(cfg.pairs, first_attempts, run, lambda *r: run_dir(cfg, *r).name, own.curriculum,
                             own.curriculum_anchor)
    anchor = own.curriculum_anchor
    if not (start and own.retry_anchor and n > anchor and start == run_dir(cfg, name, anchor, seed).name):
        return start
    retried = [r for r in rows if _run_key(r) == (name, anchor, seed) and _attempt(r) == 2]
    if retried:
        return run_dir(cfg, name, anchor, seed, 2).name if retried[0]["status"] == "ok" else start
    first = [r for r in first_attempts if _run_key(r) == (name, anchor, seed)]
    return None if _short_of_target(first[0]) else start


def sweep(cfg: SweepConfig) -> list[dict]:
    """Run every (model, n_pairs, seed) not yet in the CSV; rows are saved as each run finishes.

    Runs start smallest pair count first across all models and seeds, so an interrupted sweep has every
    model at the small pair counts."""
    for m in cfg.models:
        model_flags(m, cfg)  # unknown names fail before any run starts
    out = Path(cfg.out_dir)
    csv_path = out / "capacity.csv"
    rows = read_rows(csv_path)
    done = {(*_run_key(r), _attempt(r)) for r in rows}
    todo = [(m, n, s, 1) for n in sorted(cfg.pairs) for m in cfg.models for s in cfg.seeds if (m, n, s, 1) not in done]
    print(f"{len(done)} runs recorded, {len(todo)} to go", flush=True)
    # spawn, not fork: a fork of a process whose torch thread pool already runs can deadlock
    with ProcessPoolExecutor(max_workers=cfg.parallel, mp_context=multiprocessing.get_context("spawn")) as pool:
        running = {}
        while True:
            todo += [run for run in (_retry_due(cfg, rows, m, s) for m in cfg.models for s in cfg.seeds)
                     if run is not None and run not in todo and run not in running.values()]
            if not (todo or running):
                break
            for run in list(todo):
                if len(running) == cfg.parallel:
                    break
                init = _init_from(cfg, rows, run[:3], run[3])
                if init is not None:
                    running[pool.submit(run_one, *run[:3], cfg, init, run[3])] = run
                    todo.remove(run)
            if not running:
                raise RuntimeError(f"runs {todo} wait for runs that will never train: a bug in the run order")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                new = future.result()
                rows.extend(new)
                write_rows(csv_path, rows, COLUMNS)
                best = max((float(r["exact_match"]) for r in new), default=float("nan"))
                print(f"done {running.pop(future)}: {new[0]['status']}, exact_match {best}", flush=True)
    write_report(rows, out)
    return rows


def write_report(rows: list[dict], out: Path) -> None:
    """The plots and the markdown tables of ``rows``, into folder ``out``."""
    plot_capacity(rows, out / "capacity.png")
    plot_k_extrapolation(rows, out / "k_extrapolation.png")
    with atomic_file(out / "capacity.md") as tmp:
        tmp.write_text(summary_tables(rows))


# ---------------------------------------------------------------------------------------------
# Plots: from the CSV rows alone
# ---------------------------------------------------------------------------------------------

def _plotted(rows):
    """The rows a plot draws: those of runs that trained, at each run's last attempt (so the notebook, which
    plots the whole CSV, draws what the report draws)."""
    return [r for r in last_attempts(rows) if r["status"] == "ok"]


def _at_trained_k(rows):
    """Plotted rows evaluated as trained: K_test == K_train for GradMem, the single row otherwise."""
    return [r for r in _plotted(rows) if r["K_test"] == r["K_train"]]


def plot_capacity(rows: list[dict], path) -> None:
    """Exact match against pairs, one line (mean over seeds) per model, min-max over seeds as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 4))
    rows = _at_trained_k(rows)
    for model in sorted({r["model"] for r in rows}):
        pairs = sorted({int(r["n_pairs"]) for r in rows if r["model"] == model})
        em = [[float(r["exact_match"]) for r in rows if r["model"] == model and int(r["n_pairs"]) == n] for n in pairs]
        ax.plot(pairs, [np.mean(e) for e in em], marker="o", label=model)
        ax.fill_between(pairs, [min(e) for e in em], [max(e) for e in em], alpha=0.2)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("key-value pairs in the context")
    ax.set_ylabel("exact match (test)")
    ax.set_ylim(0, 1.02)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_k_extrapolation(rows: list[dict], path) -> None:
    """Heatmaps of mean exact match over GradMem models (rows, by their K_train) x K_test (columns), one per
    pair count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in _plotted(rows) if r["K_train"] and r["K_test"]]
    pairs = sorted({int(r["n_pairs"]) for r in rows})
    models = [m for _, m in sorted({(int(r["K_train"]), r["model"]) for r in rows})]
    k_test = sorted({int(r["K_test"]) for r in rows})
    fig, axes = plt.subplots(1, max(1, len(pairs)), figsize=(2.6 * max(1, len(pairs)) + 1, 2.8), squeeze=False,
                             layout="constrained")
    for ax, n in zip(axes[0], pairs):
        grid = np.full((len(models), len(k_test)), np.nan)
        for i, model in enumerate(models):
            for j, ke in enumerate(k_test):
                em = [float(r["exact_match"]) for r in rows
                      if int(r["n_pairs"]) == n and r["model"] == model and int(r["K_test"]) == ke]
                grid[i, j] = np.mean(em) if em else np.nan
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", origin="lower")
        ax.set_xticks(range(len(k_test)), k_test)
        ax.set_yticks(range(len(models)), models if ax is axes[0][0] else [])
        ax.set_xlabel("K_test")
        ax.set_title(f"{n} pairs")
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if v < 0.6 else "k")
    if pairs:
        fig.colorbar(im, ax=axes[0].tolist(), label="exact match")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _markdown_table(header: str, keys, pairs, select, cell) -> str:
    """A markdown table with a row per key and a column per pair count; ``cell`` formats the rows
    ``select(key)`` holds at that pair count."""
    lines = [f"| {header} | " + " | ".join(f"N={n}" for n in pairs) + " |", "|---" * (len(pairs) + 1) + "|"]
    for key in keys:
        chosen = select(key)
        lines.append(f"| {key} | " + " | ".join(cell([r for r in chosen if int(r["n_pairs"]) == n]) for n in pairs)
                     + " |")
    return "\n".join(lines) + "\n"


def _exact_match_cell(runs: list[dict]) -> str:
    """Mean (min-max) exact match of the runs that trained; failed or diverged ones are counted."""
    ems = [float(r["exact_match"]) for r in runs if r["status"] == "ok"]
    bad = sum(r["status"] != "ok" for r in runs)
    text = f"{sum(ems) / len(ems):.3f} ({min(ems):.2f}-{max(ems):.2f})" if ems else "-"
    return text + (f", {bad} failed" if bad else "")


def _budget_cell(runs: list[dict]) -> str:
    """Median steps and training minutes of the runs that trained, and how many reached the target."""
    runs = [r for r in runs if r["status"] == "ok"]
    if not runs:
        return "-"
    steps = statistics.median(int(r["steps"]) for r in runs)
    minutes = statistics.median(float(r["train_time_s"]) / 60 for r in runs)
    hit = sum(r["stopped"] == "target_exact_match" for r in runs)
    return f"{steps:,.0f}, {minutes:.1f} min, {hit}/{len(runs)}"


def summary_tables(rows: list[dict]) -> str:
    """Markdown: mean test exact match over seeds (min-max in brackets) per model and pair count, as
    trained; then GradMem per K_test; then the budget each model used (median steps and minutes, and how
    many of its runs stopped at the target exact match rather than on patience or a cap); then the anchor
    runs that were retried. Every table but the last shows each run's last attempt. Failed or diverged runs
    are counted, not averaged."""
    retried = [r for r in rows if _attempt(r) > 1 and r["K_test"] == r["K_train"]]
    first_attempts = {_run_key(r): r for r in rows if _attempt(r) == 1 and r["K_test"] == r["K_train"]}
    rows = last_attempts(rows)
    pairs = sorted({int(r["n_pairs"]) for r in rows})
    models = sorted({r["model"] for r in rows})
    as_trained = [r for r in rows if r["K_test"] == r["K_train"] or r["status"] != "ok"]
    of_model = lambda m: [r for r in as_trained if r["model"] == m]
    out = "Test exact match, as trained (mean over seeds, min-max in brackets):\n\n"
    out += _markdown_table("model", models, pairs, of_model, _exact_match_cell)
    gradmem = [r for r in rows if r["K_train"] and r["status"] == "ok"]
    keys = sorted({(int(r["K_train"]), r["model"], int(r["K_test"])) for r in gradmem})
    if keys:
        out += "\nGradMem test exact match by K_test (trained at the K in its name):\n\n"
        out += _markdown_table("model / K_test", [f"{m} / {k}" for _, m, k in keys], pairs,
                               lambda key: [r for r in gradmem if f"{r['model']} / {r['K_test']}" == key],
                               _exact_match_cell)
    if any(r.get("train_time_s") not in (None, "") for r in as_trained):  # 0.0 s is a time; round 1 had none
        out += "\nTraining budget used: median steps, median minutes, runs that reached the target / runs:\n\n"
        out += _markdown_table("model", models, pairs, of_model, _budget_cell)
    if retried:
        out += ("\nRetried at the anchor, from the next smaller pair count's weights (test exact match; stopped "
                "by; steps):\n\n| run | first attempt | retry |\n|---|---|---|\n")
        for r in retried:
            first = first_attempts[_run_key(r)]
            out += (f"| {r['model']} N={r['n_pairs']} seed {r['seed']} | {first['exact_match']}; {first['stopped']}; "
                    f"{first['steps']} | {r['exact_match']}; {r['stopped']}; {r['steps']} |\n")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p, SweepConfig, "sweep")
    cfg = config_from_args(SweepConfig, p.parse_args(argv))
    if cfg.report_only:
        rows = read_rows(Path(cfg.out_dir) / "capacity.csv")
        if not rows:
            raise SystemExit(f"--report_only: no rows in {Path(cfg.out_dir) / 'capacity.csv'}; run the sweep first.")
        write_report(rows, Path(cfg.out_dir))
        print(f"redrew the plots and capacity.md from {len(rows)} rows")
        return 0
    sweep(cfg)
    print(f"wrote {Path(cfg.out_dir) / 'capacity.csv'} and the plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
