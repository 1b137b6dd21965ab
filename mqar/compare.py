"""MQAR comparison: parameter-matched GPT, DeltaNet and UnifiedKV (full context), and GradMem and RMT
(equal memory bytes, on the GPT backbone), over pair counts, trained by the one loop (``training.train``).

Each run trains in a fresh single-threaded process (``parallel`` at a time) and is evaluated on the
test split; its row (accuracy per query and per sequence, the state it keeps in bytes, parameters,
steps, time, status) is appended to ``OUT_DIR/mqar.csv`` as it finishes. Resumable: runs with a row
are skipped, an interrupted run resumes from its checkpoint. ``mqar.png`` and ``mqar.md`` are drawn
from the CSV alone. ``--time_steps N`` times N training steps of every (model, pair count) instead,
and prints the projected wall time of the comparison.

    python -m mqar.compare --help
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import asdict, dataclass
from pathlib import Path

from cli import add_config_args, config_from_args, option
from io_utils import atomic_file
from sweeps import curriculum_start, read_rows, write_rows

MODELS = ("gpt", "deltanet", "unifiedkv", "gradmem", "rmt")
BASE_MODELS = {"gpt": "mqar_gpt", "deltanet": "deltanet", "unifiedkv": "unifiedkv", "gradmem": "mqar_gpt",
               "rmt": "mqar_gpt"}
COLUMNS = ("model", "backbone", "n_pairs", "seq_len", "seed", "query_accuracy", "sequence_accuracy",
           "state_bytes", "block_params", "total_params", "steps", "wall_time_s", "status", "init_from")


@dataclass
class CompareConfig:
    out_dir: str = option("results", "folder for mqar.csv, mqar.png and mqar.md")
    runs_dir: str = option("runs/mqar", "folder for the training runs")
    models: tuple[str, ...] = option(MODELS, f"models among {MODELS}")
    pairs: tuple[int, ...] = option((2, 4, 8, 16, 32, 64), "key-value pairs per example (2 and 4 start the "
                                    "curriculum: from scratch at 8, the GPT stayed at chance for 2,000 steps)")
    min_seq_len: int = option(128, "sequence length: max(min_seq_len, 4 n_pairs)")
    vocab_size: int = option(512, "MQAR vocabulary (CPU scale; the seed's is 2048)")
    seeds: tuple[int, ...] = option((0,), "seeds (of data order and weights; the data itself uses seed 0)")
    n_layer: int = option(2, "layers of every backbone (CPU scale, as Zoology's 2; the seed's is 4)")
    n_head: int = option(2, "heads (the seed: 2)")
    n_embd: int = option(64, "width (the seed: 64)")
    n_mem_tokens: int = option(16, "memory vectors of GradMem and RMT (equal bytes: n_mem_tokens x n_embd x 4)")
    gradmem_K: int = option(2, "GradMem's inner WRITE steps (second order)")
    inner_optimizer: str = option("adam", "GradMem's inner update rule (adam needs K >= 2)")
    inner_lr: float = option(0.5, "GradMem's inner learning rate")
    n_train: int = option(20_000, "training examples per pair count (generated in memory, seed 0)")
    n_valid: int = option(500, "validation and test examples")
    batch_size: int = option(32, "examples per step (the seed: 32)")
    learning_rate: float = option(3e-3, "AdamW learning rate (the seed's is 1e-3), cosine decay after warmup")
    warmup_steps: int = option(100, "linear warmup steps")
    max_steps: int = option(2000, "optimizer steps per run, the same for every model")
    eval_steps: int = option(500, "validation every N steps (early stop; the final weights are tested)")
    stop_at_exact_match: float = option(0.99, "a run stops once validation accuracy per sequence reaches this")
    max_train_minutes: float = option(30.0, "wall-clock cap per run (a safety net; steps set the budget)")
    curriculum: bool = option(True, "start each run from the final weights of the same model and seed at the "
                                    "next smaller pair count")
    parallel: int = option(2, "runs at a time, one thread each")
    time_steps: int = option(0, "time this many training steps per (model, pair count) and print the projected "
                                "wall time, instead of running the comparison")

    def __post_init__(self):
        unknown = [m for m in self.models if m not in MODELS]
        if unknown:
            raise ValueError(f"unknown models {unknown}: choose among {MODELS}.")
        for field_name in ("n_train", "n_valid", "batch_size", "max_steps", "eval_steps", "parallel"):
            if getattr(self, field_name) < 1:
                raise ValueError(f"CompareConfig: {field_name} must be >= 1.")

    def seq_len(self, n_pairs: int) -> int:
        return max(self.min_seq_len, 4 * n_pairs)


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------

def run_dir(cfg: CompareConfig, name: str, n_pairs: int, seed: int) -> Path:
    return Path(cfg.runs_dir) / f"{name}_N{n_pairs}_s{seed}"


def build(cfg: CompareConfig, name: str, n_pairs: int, seed: int):
    """(task, tokenizer, model, {"backbone": ..., "model": ...}) of one run."""
    import torch

    from backbones import BackboneConfig, build_backbone
    from full_context import FullContextConfig, FullContextLM
    from grad_memgpt import GradMemConfig, GradMemGPT
    from mqar.task import MQARTask, MQARTaskArgs
    from rmt import RMT, RMTConfig

    task = MQARTask(MQARTaskArgs(n_pairs=n_pairs, seq_len=cfg.seq_len(n_pairs), vocab_size=cfg.vocab_size,
                                 n_train=cfg.n_train, n_valid=cfg.n_valid))
    tokenizer = task.tokenizer()
    backbone = BackboneConfig(base_model=BASE_MODELS[name], n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd)
    if name == "gradmem":
        model_cls, model_cfg = GradMemGPT, GradMemConfig(
            n_mem_tokens=cfg.n_mem_tokens, K=cfg.gradmem_K, grad_mode="second", inner_optimizer=cfg.inner_optimizer,
            inner_lr=cfg.inner_lr)
    elif name == "rmt":
        model_cls, model_cfg = RMT, RMTConfig(n_mem_tokens=cfg.n_mem_tokens, mem_proj_mode="proj")
    else:
        model_cls, model_cfg = FullContextLM, FullContextConfig()
    torch.manual_seed(seed)
    model = model_cls(build_backbone(backbone, tokenizer), model_cfg)
    return task, tokenizer, model, {"backbone": backbone, "model": model_cfg}


def train_config(cfg: CompareConfig, exp: Path, seed: int, init_from: str):
    from training import TrainConfig

    return TrainConfig(exp_path=str(exp), per_device_batch_size=cfg.batch_size, eval_batch_size=cfg.n_valid,
                       learning_rate=cfg.learning_rate, lr_scheduler="cosine", warmup_steps=cfg.warmup_steps,
                       max_steps=cfg.max_steps, eval_steps=cfg.eval_steps, stop_at_exact_match=cfg.stop_at_exact_match,
                       max_train_minutes=cfg.max_train_minutes, seed=seed, show_progress=False,
                       init_checkpoint=str(Path(cfg.runs_dir) / init_from / "final") if init_from else None)


def run_one(name: str, n_pairs: int, seed: int, cfg: CompareConfig, init_from: str = "") -> dict | None:
    """Train one run (resuming if interrupted), test its final weights, return its CSV row. Runs in a
    fresh worker process; its output goes to the run's log.txt.

    The final weights, not the loop's ``best``: the loop ranks checkpoints by exact match, which is
    accuracy per sequence here and stays 0 long after the accuracy per query has risen, so ``best``
    would keep the first evaluation's weights. A run stopped by a signal returns None (no row: the next
    invocation resumes it from its checkpoint)."""
    import torch

    torch.set_num_threads(1)
    exp = run_dir(cfg, name, n_pairs, seed)
    exp.mkdir(parents=True, exist_ok=True)
    base = {"model": name, "backbone": BASE_MODELS[name], "n_pairs": n_pairs, "seq_len": cfg.seq_len(n_pairs),
            "seed": seed, "init_from": init_from}
    t0 = time.perf_counter()
    with open(exp / "log.txt", "a") as log, redirect_stdout(log), redirect_stderr(log):
        try:
            from evaluate import run_evaluation
            from mqar.modeling import parameter_counts
            from training import train

            task, tokenizer, model, configs = build(cfg, name, n_pairs, seed)
            counts = parameter_counts(model.lm)
            result = train(model, train_config(cfg, exp, seed, init_from), task, tokenizer, configs)
            if result["stopped"] == "signal":
                return None
            model.save_pretrained(exp / "final", overwrite=True)
            test, _ = run_evaluation(exp, split="test", checkpoint="final")
        except Exception as e:  # a failed run is a row with its reason, not a crashed comparison
            print(f"failed: {type(e).__name__}: {e}", flush=True)
            return {**base, "query_accuracy": "nan", "sequence_accuracy": "nan", "state_bytes": "",
                    "block_params": "", "total_params": "", "steps": "",
                    "wall_time_s": round(time.perf_counter() - t0, 1), "status": f"failed: {type(e).__name__}: {e}"[:200]}
    return {**base, "query_accuracy": round(test["token_accuracy"], 4), "sequence_accuracy": round(test["exact_match"], 4),
            "state_bytes": test["state_bytes_per_context"], "block_params": counts["blocks"],
            "total_params": sum(p.numel() for p in model.parameters()), "steps": result["step"],
            "wall_time_s": round(time.perf_counter() - t0, 1),
            "status": "ok" if test["loss"] == test["loss"] else "diverged"}


# ---------------------------------------------------------------------------------------------
# The comparison
# ---------------------------------------------------------------------------------------------

def init_from(cfg: CompareConfig, rows: list[dict], run: tuple[str, int, int]) -> str | None:
    return curriculum_start(cfg.pairs, rows, run, lambda *r: run_dir(cfg, *r).name, cfg.curriculum)


def compare(cfg: CompareConfig) -> list[dict]:
    """Run every (model, n_pairs, seed) not yet in the CSV, smallest pair count first; save rows as runs
    finish; then draw the plot and the tables."""
    out = Path(cfg.out_dir)
    csv_path = out / "mqar.csv"
    rows = read_rows(csv_path)
    done = {(r["model"], int(r["n_pairs"]), int(r["seed"])) for r in rows}
    todo = [(m, n, s) for n in sorted(cfg.pairs) for m in cfg.models for s in cfg.seeds if (m, n, s) not in done]
    print(f"{len(done)} runs recorded, {len(todo)} to go", flush=True)
    # spawn, one run per process: each run gets a fresh accelerate state and thread pool
    with ProcessPoolExecutor(max_workers=cfg.parallel, mp_context=multiprocessing.get_context("spawn"),
                             max_tasks_per_child=1) as pool:
        running, interrupted = {}, False
        while running or (todo and not interrupted):
            for run in [] if interrupted else list(todo):
                if len(running) == cfg.parallel:
                    break
                start = init_from(cfg, rows, run)
                if start is not None:
                    running[pool.submit(run_one, *run, cfg, start)] = run
                    todo.remove(run)
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                row, run = future.result(), running.pop(future)
                if row is None:  # stopped by a signal: start nothing new
                    interrupted = True
                    print(f"interrupted {run}: run the comparison again to resume it", flush=True)
                    continue
                rows.append(row)
                write_rows(csv_path, rows, COLUMNS)
                print(f"done {run}: {row['status']}, per query {row['query_accuracy']}, per sequence "
                      f"{row['sequence_accuracy']}, {row['wall_time_s']} s", flush=True)
    plot(rows, out / "mqar.png")
    with atomic_file(out / "mqar.md") as tmp:
        tmp.write_text(summary_tables(rows))
    return rows


# ---------------------------------------------------------------------------------------------
# From the CSV alone
# ---------------------------------------------------------------------------------------------

def _mean(values):
    return sum(values) / len(values) if values else float("nan")


def _by_model(rows):
    ok = [r for r in rows if r["status"] == "ok"]
    models = [m for m in MODELS if any(r["model"] == m for r in ok)]
    pairs = sorted({int(r["n_pairs"]) for r in rows})
    return ok, models, pairs


def plot(rows: list[dict], path) -> None:
    """Accuracy per query and per sequence against pairs (mean over seeds), and each model's state in bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok, models, pairs = _by_model(rows)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for model in models:
        mine = [r for r in ok if r["model"] == model]
        xs = sorted({int(r["n_pairs"]) for r in mine})
        for ax, column in zip(axes[:2], ("query_accuracy", "sequence_accuracy")):
            ax.plot(xs, [_mean([float(r[column]) for r in mine if int(r["n_pairs"]) == n]) for n in xs], marker="o",
                    label=model)
        axes[2].plot(xs, [_mean([float(r["state_bytes"]) for r in mine if int(r["n_pairs"]) == n]) for n in xs],
                     marker="o", label=model)
    for ax, title in zip(axes, ("accuracy per query (test)", "accuracy per sequence (test)",
                                "state kept per context (bytes)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(pairs, [str(n) for n in pairs])
        ax.set_xlabel("key-value pairs")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    for ax in axes[:2]:
        ax.set_ylim(0, 1.02)
    axes[2].set_yscale("log")
    axes[0].legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary_tables(rows: list[dict]) -> str:
    """Markdown: test accuracy per query / per sequence (mean over seeds), then state bytes, per model and
    pair count; failed runs are counted, not averaged."""
    ok, models, pairs = _by_model(rows)
    models += [m for m in MODELS if m not in models and any(r["model"] == m for r in rows)]
    header = "| model | " + " | ".join(f"N={n} (L={r['seq_len']})" for n, r in
                                        sorted({int(r["n_pairs"]): r for r in rows}.items())) + " |"
    rule = "|---" * (len(pairs) + 1) + "|"

    def cell(model, n, fmt):
        mine = [r for r in ok if r["model"] == model and int(r["n_pairs"]) == n]
        bad = sum(1 for r in rows if r["model"] == model and int(r["n_pairs"]) == n and r["status"] != "ok")
        return (fmt(mine) if mine else "-") + (f", {bad} failed" if bad else "")

    acc = lambda mine: (f"{_mean([float(r['query_accuracy']) for r in mine]):.3f} / "
                        f"{_mean([float(r['sequence_accuracy']) for r in mine]):.3f}")
    size = lambda mine: f"{int(_mean([float(r['state_bytes']) for r in mine])):,}"
    out = "Test accuracy per query / per sequence (mean over seeds):\n\n" + header + "\n" + rule + "\n"
    out += "".join(f"| {m} | " + " | ".join(cell(m, n, acc) for n in pairs) + " |\n" for m in models)
    out += "\nState kept per context after the KV region, in bytes (float32):\n\n" + header + "\n" + rule + "\n"
    out += "".join(f"| {m} | " + " | ".join(cell(m, n, size) for n in pairs) + " |\n" for m in models)
    return out


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------

def time_steps(cfg: CompareConfig) -> dict:
    """Seconds per training step (single thread, after one warm-up step) of every (model, pair count),
    and the projected wall time of the comparison at ``parallel`` runs at a time."""
    import torch

    from training import param_groups

    torch.set_num_threads(1)
    seconds = {}
    for n in cfg.pairs:
        for name in cfg.models:
            task, tokenizer, model, _ = build(cfg, name, n, 0)
            data = task.load_splits(("train",), seed=0)["train"]
            collate = task.collator(tokenizer)
            opt = torch.optim.AdamW(param_groups(model, 0.01), lr=cfg.learning_rate)
            times = []
            for step in range(cfg.time_steps + 1):
                batch = collate([data[i] for i in range(step * cfg.batch_size, (step + 1) * cfg.batch_size)])
                t0 = time.perf_counter()
                model(**batch).loss.backward()
                opt.step()
                opt.zero_grad()
                times.append(time.perf_counter() - t0)
            seconds[(name, n)] = sum(times[1:]) / cfg.time_steps
            print(f"{name:10s} N={n:3d} L={cfg.seq_len(n)}: {seconds[(name, n)]:.3f} s/step", flush=True)
    total = sum(seconds.values()) * cfg.max_steps * len(cfg.seeds) / cfg.parallel
    print(f"projected: {total / 3600:.1f} h for {cfg.max_steps} steps per run, {len(cfg.seeds)} seed(s), "
          f"{cfg.parallel} runs at a time (training steps only; evaluations and early stops not counted)")
    return {"seconds_per_step": seconds, "projected_hours": total / 3600}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p, CompareConfig, "comparison")
    try:
        cfg = config_from_args(CompareConfig, p.parse_args(argv))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cfg.time_steps:
        time_steps(cfg)
        return 0
    print(json.dumps(asdict(cfg), indent=2))
    compare(cfg)
    print(f"wrote {Path(cfg.out_dir) / 'mqar.csv'}, mqar.png and mqar.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
