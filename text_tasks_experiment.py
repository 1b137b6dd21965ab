"""CPU-scale natural-language experiment: one pretrained LM (SmolLM2-135M by default) on offline bAbI and
phonebook data, answered by GradMem from memory alone (the context removed at READ), by the full-context
model, by the closed-book model (query only) and by RMT, each with the same training budget.

Every run trains through its ``run_*_on_<task>.py`` script, then is evaluated on the test split by greedy
generation. Each run is a row of ``results/text_tasks.csv``, saved as it finishes; the sweep resumes
(runs with a row are skipped, an interrupted run continues from its checkpoint). ``results/text_tasks.md``
is drawn from the CSV, with the majority-answer baseline of each task's test split beside it.

    python text_tasks_experiment.py --help
    python text_tasks_experiment.py --tasks babi:qa1 phonebook:4 --models gradmem closed_book
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sweeps import read_rows, write_rows
from cli import add_config_args, config_from_args, option
from io_utils import atomic_file

ROOT = Path(__file__).resolve().parent
COLUMNS = ("task", "model", "steps", "wall_time_s", "teacher_forced_exact_match", "generated_exact_match",
           "generated_f1", "majority_answer_exact_match", "state_bytes_per_context", "status", "settings")
SCRIPTS = {"gradmem": "run_gradmemgpt_on_{task}.py", "rmt": "run_rmt_on_{task}.py",
           "full_context": "run_gpt2_on_{task}.py", "closed_book": "run_gpt2_on_{task}.py"}


@dataclass
class TextExperimentConfig:
    out_dir: str = option("results", "folder for text_tasks.csv and text_tasks.md")
    runs_dir: str = option("runs/text_tasks", "folder for the training runs")
    pretrained: str = option("smollm2-135m", "pretrained LM: a short name (backbones.PRETRAINED), a local folder or "
                                             "a .gguf file")
    tasks: tuple[str, ...] = option(("babi:qa1", "phonebook:4", "phonebook:8"),
                                    "tasks as name:variant: babi:qa1..qa5, phonebook:<entries>")
    models: tuple[str, ...] = option(("gradmem", "full_context", "closed_book", "rmt"), "models to train")
    n_train: int = option(4000, "generated training samples per task")
    n_valid: int = option(100, "generated validation and test samples per task")
    max_steps: int = option(50, "optimizer steps per run (the same for every model)")
    max_train_minutes: float = option(25.0, "wall-clock cap per run")
    batch_size: int = option(8, "samples per step")
    learning_rate: float = option(2e-4, "outer learning rate")
    eval_steps: int = option(50, "validation every N steps (teacher-forced)")
    n_mem_tokens: int = option(8, "memory vectors of GradMem and RMT")
    K: int = option(2, "GradMem's inner steps")
    grad_mode: str = option("first", "GradMem's outer gradient through WRITE", choices=("first", "second"))
    inner_lr: float = option(0.01, "GradMem's inner learning rate")
    inner_optimizer: str = option("adam", "GradMem's inner update rule (a pretrained LM's WRITE loss is rough in the "
                                  "memory: SGD steps of 0.01 already raise it, Adam's per-coordinate steps lower it)",
                                  choices=("sgd", "adam"))
    threads: int = option(1, "torch threads per run (runs go one at a time; one thread stays fast when "
                                        "other work shares the cores)")


def task_flags(task: str, cfg: TextExperimentConfig) -> tuple[str, list[str]]:
    """(task name, its flags) for ``name:variant``."""
    name, _, variant = task.partition(":")
    sizes = ["--n_train", str(cfg.n_train), "--n_valid", str(cfg.n_valid)]
    if name == "babi":
        return name, ["--babi_task", variant or "qa1", *sizes]
    if name == "phonebook":
        return name, ["--n_entries", variant or "8", *sizes]
    raise ValueError(f"unknown task {task!r}: use babi:qa<k> or phonebook:<entries>.")


def model_flags(model: str, cfg: TextExperimentConfig) -> list[str]:
    if model == "gradmem":
        return ["--n_mem_tokens", str(cfg.n_mem_tokens), "--K", str(cfg.K), "--grad_mode", cfg.grad_mode,
                "--inner_lr", str(cfg.inner_lr), "--inner_optimizer", cfg.inner_optimizer, "--mem_proj_mode", "proj"]
    if model == "rmt":
        return ["--n_mem_tokens", str(cfg.n_mem_tokens), "--mem_proj_mode", "proj"]
    if model == "closed_book":
        return ["--closed_book"]
    if model == "full_context":
        return []
    raise ValueError(f"unknown model {model!r}: use one of {sorted(SCRIPTS)}.")


def pretrained_flag(pretrained: str) -> list[str]:
    from backbones import PRETRAINED

    return ["--pretrained" if pretrained in PRETRAINED else "--pretrained_path", pretrained]


def majority_baseline(exp: Path) -> float:
    """Test exact match of always answering the most frequent training answer."""
    from evaluate import load_task

    task, train_cfg = load_task(exp)
    data = task.load_splits(("train", "test"), seed=train_cfg.seed)
    answer, _ = Counter(data["train"]["target"]).most_common(1)[0]
    scores = task.score_texts([answer] * len(data["test"]), list(data["test"]))
    return sum(scores["exact_match"]) / len(data["test"])


def run_one(task: str, model: str, cfg: TextExperimentConfig) -> dict:
    """Train one run (resuming if interrupted), evaluate it by generation, return its CSV row."""
    name, flags = task_flags(task, cfg)
    exp = Path(cfg.runs_dir) / f"{task.replace(':', '_')}-{model}"
    settings = model_flags(model, cfg)
    cmd = [sys.executable, str(ROOT / SCRIPTS[model].format(task=name)), *flags, *settings,
           *pretrained_flag(cfg.pretrained), "--exp_path", str(exp), "--per_device_batch_size", str(cfg.batch_size),
           "--learning_rate", str(cfg.learning_rate), "--warmup_steps", str(max(1, cfg.max_steps // 10)),
           "--max_steps", str(cfg.max_steps), "--max_train_minutes", str(cfg.max_train_minutes),
           "--eval_steps", str(cfg.eval_steps), "--no-show_progress"]
    row = {"task": task, "model": model, "settings": " ".join(settings)}
    exp.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(exp / "log.txt", "a") as log:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                              env=dict(os.environ, OMP_NUM_THREADS=str(cfg.threads), HF_HUB_OFFLINE="1"))
    row["wall_time_s"] = round(time.perf_counter() - t0, 1)
    if proc.returncode:
        tail = (exp / "log.txt").read_text().strip().splitlines()[-1:] or ["no output"]
        return {**row, "status": f"failed (exit {proc.returncode}): {tail[0][:200]}"}
    from evaluate import run_evaluation, save_results

    result, records = run_evaluation(exp, split="test")
    save_results(result, records)
    steps = json.loads((exp / "checkpoint" / "trainer_state.json").read_text())["step"]
    return {**row, "steps": steps, "teacher_forced_exact_match": round(result["exact_match"], 4),
            "generated_exact_match": round(result["generated_exact_match"], 4),
            "generated_f1": round(result.get("generated_f1", float("nan")), 4),
            "majority_answer_exact_match": round(majority_baseline(exp), 4),
            "state_bytes_per_context": result["state_bytes_per_context"], "status": "ok"}


def summary_table(rows: list[dict]) -> str:
    """Markdown: generated test exact match per task (rows) and model (columns), then the details."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    by_key = {(r["task"], r["model"]): r for r in rows}
    lines = ["| task | majority answer | " + " | ".join(models) + " |", "|---" * (len(models) + 2) + "|"]
    for task in tasks:
        majority = next((r["majority_answer_exact_match"] for r in rows if r["task"] == task and r["status"] == "ok"), "-")
        cells = []
        for m in models:
            r = by_key.get((task, m))
            cells.append("-" if r is None else r["generated_exact_match"] if r["status"] == "ok" else "failed")
        lines.append(f"| {task} | {majority} | " + " | ".join(cells) + " |")
    lines += ["", "| task | model | steps | wall s | teacher-forced EM | generated EM | generated F1 | state bytes | settings |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['model']} | {r.get('steps', '')} | {r.get('wall_time_s', '')} | "
                     f"{r.get('teacher_forced_exact_match', '')} | {r.get('generated_exact_match', '')} | "
                     f"{r.get('generated_f1', '')} | {r.get('state_bytes_per_context', '')} | {r['settings']} |")
    return "\n".join(lines) + "\n"


def run_all(cfg: TextExperimentConfig) -> list[dict]:
    import torch

    torch.set_num_threads(cfg.threads)  # the evaluations run in this process
    for task in cfg.tasks:
        task_flags(task, cfg)
    for model in cfg.models:
        model_flags(model, cfg)  # unknown names fail before any run starts
    out = Path(cfg.out_dir)
    csv_path = out / "text_tasks.csv"
    rows = read_rows(csv_path)
    done = {(r["task"], r["model"]) for r in rows}
    for task in cfg.tasks:
        for model in cfg.models:
            if (task, model) in done:
                continue
            print(f"training {model} on {task}", flush=True)
            rows.append(run_one(task, model, cfg))
            write_rows(csv_path, rows, COLUMNS)
            print(f"done {task} {model}: {rows[-1]['status']}, generated EM {rows[-1].get('generated_exact_match')}",
                  flush=True)
    with atomic_file(out / "text_tasks.md") as tmp:
        tmp.write_text(summary_table(read_rows(csv_path)))  # from the CSV alone
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p, TextExperimentConfig, "experiment")
    cfg = config_from_args(TextExperimentConfig, p.parse_args(argv))
    run_all(cfg)
    print(f"wrote {Path(cfg.out_dir) / 'text_tasks.csv'} and text_tasks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
