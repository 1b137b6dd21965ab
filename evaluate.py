"""Re-evaluate a saved run on any split with any number of WRITE steps, teacher-forced and by generation.

    python evaluate.py --exp_path runs/gradmem --split test --K 5

Teacher-forced: exact match and token accuracy over the task's scored target tokens. By generation
(``--generate``, on by default): the model WRITEs the context, then decodes greedily from memory and
query alone (up to ``--max_new_tokens``, stopping at EOS or the task's answer end), and the decoded
text is scored with the task's metric (exact match, and F1 for text tasks). Metrics go to
``EXP_PATH/eval_<split>_K<K>.json``; every prediction (id, query, prediction, gold answers, scores) to
``EXP_PATH/predictions_<split>_K<K>.jsonl``. ``--K`` larger than the trained K tests extrapolation.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from io_utils import atomic_file
from tasks import Task, gold_answers, query_only, task_class
from training import MODEL_CLASSES, TrainConfig, evaluate, max_context_tokens


def run_config(exp_path: Path) -> dict:
    config_file = Path(exp_path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{exp_path} is not a run folder (no config.json): pass the --exp_path of a training run.")
    return upgrade_run_config(json.loads(config_file.read_text()))


def load_task(exp_path: Path) -> tuple[Task, TrainConfig]:
    """(task, train config) of a run folder, without loading its model."""
    config = run_config(exp_path)
    task_cls = task_class(config.get("task_name", "kv"))
    return task_cls(task_cls.config_class(**config["task"])), TrainConfig(**config["train"])


def load_run(exp_path: Path, checkpoint: str = "best"):
    """(model, tokenizer, train config, task) of a run folder written by training.train."""
    from transformers import AutoTokenizer

    config = run_config(exp_path)
    model = MODEL_CLASSES[config["model_type"]].from_pretrained(
        exp_path / checkpoint, attn_implementation=config["backbone"]["attn_implementation"])
    tokenizer = AutoTokenizer.from_pretrained(str(exp_path / "tokenizer"))
    task, train_cfg = load_task(exp_path)
    return model, tokenizer, train_cfg, task


def upgrade_run_config(config: dict) -> dict:
    """Runs saved before the task interface kept the KV data flags in the training config."""
    if "task" in config:
        return config
    kv_fields = {f.name for f in dataclasses.fields(task_class("kv").config_class)}
    train = {k: v for k, v in config["train"].items() if k not in kv_fields}
    task = {k: v for k, v in config["train"].items() if k in kv_fields}
    return {**config, "train": train, "task_name": "kv", "task": task}


def decode_answer(tokenizer, ids: list[int], stop: str) -> str:
    """Generated ids -> the answer text: up to EOS, then up to the task's stop string, stripped."""
    if tokenizer.eos_token_id in ids:
        ids = ids[: ids.index(tokenizer.eos_token_id)]
    return tokenizer.decode(ids, skip_special_tokens=True).split(stop)[0].strip()


def max_answer_tokens(ds, collate, n: int = 256) -> int:
    """Longest labelled answer (target and EOS) among the first ``n`` samples, in tokens."""
    batch = collate([ds[i] for i in range(min(n, len(ds)))])
    return int((batch["labels"] != -100).sum(1).max())


@torch.no_grad()
def generate_predictions(model, ds, collate, tokenizer, task: Task, *, batch_size: int, K=None,
                         max_new_tokens: int | None = None, device="cpu") -> tuple[dict, list[dict]]:
    """Greedy answers from memory and query alone, scored by ``task.score_texts``.

    Returns (mean scores, one record per sample: id, query, prediction, answers and its scores)."""
    model.eval()
    max_new_tokens = max_new_tokens or max_answer_tokens(ds, collate) + 2
    records, scores = [], {}
    for start in range(0, len(ds), batch_size):
        samples = [ds[i] for i in range(start, min(start + batch_size, len(ds)))]
        batch = {k: v.to(device) for k, v in collate(samples).items()}
        memory = model.write(batch["context_input_ids"], K=K)
        query_ids = query_only(batch, tokenizer.pad_token_id)
        new = model.generate(memory, query_ids, max_new_tokens=max_new_tokens).tolist()
        predictions = [decode_answer(tokenizer, ids, task.answer_stop) for ids in new]
        batch_scores = task.score_texts(predictions, samples)
        for i, (s, p) in enumerate(zip(samples, predictions)):
            records.append({"id": s.get("id", start + i), "query": s["query"], "prediction": p,
                            "answers": gold_answers(s), **{k: v[i] for k, v in batch_scores.items()}})
        for k, v in batch_scores.items():
            scores.setdefault(k, []).extend(v)
    return {f"generated_{k}": sum(v) / len(v) for k, v in scores.items()}, records


def run_evaluation(exp_path, split="test", K=None, data_path=None, checkpoint="best", batch_size=None,
                   max_samples=None, generate=True, max_new_tokens=None) -> tuple[dict, list[dict]]:
    """Metrics of a saved run on ``split`` (and the generated predictions, empty when not generating)."""
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    exp_path = Path(exp_path)
    model, tokenizer, cfg, task = load_run(exp_path, checkpoint)
    if data_path:
        task.config.data_path = data_path
    ds = task.load_splits((split,), seed=cfg.seed)[split]
    if max_samples:
        ds = ds.select(range(min(max_samples, len(ds))))
    batch_size = batch_size or cfg.eval_batch_size or cfg.per_device_batch_size
    collate = task.collator(tokenizer, max_context_length=max_context_tokens(model, cfg))
    accelerator = Accelerator()
    dl = DataLoader(ds, batch_size=batch_size, collate_fn=collate)
    model, dl = accelerator.prepare(model, dl)
    metrics = evaluate(model, dl, accelerator, task, tokenizer, K=K)
    unwrapped = accelerator.unwrap_model(model)
    records = []
    if generate and hasattr(ds, "column_names") and "query" in ds.column_names:
        generated, records = generate_predictions(unwrapped, ds, collate, tokenizer, task, batch_size=batch_size, K=K,
                                                  max_new_tokens=max_new_tokens, device=accelerator.device)
        metrics.update(generated)
    first = collate([ds[0]])["context_input_ids"]
    return {"exp_path": str(exp_path), "model_type": unwrapped.model_type, "task": task.describe(), "split": split,
            "n_samples": len(ds), "K": K if K is not None else getattr(unwrapped.config, "K", None),
            "state_bytes_per_context": unwrapped.state_bytes_per_context(first.shape[1]), **metrics}, records


def save_results(result: dict, records: list[dict], out=None) -> Path:
    """The metrics as JSON (default: EXP_PATH/eval_<split>_K<K>.json) and the predictions as JSONL beside it."""
    out = Path(out or Path(result["exp_path"]) / f"eval_{result['split']}_K{result['K']}.json")
    with atomic_file(out) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    if records:
        predictions = out.with_name(out.name.replace("eval_", "predictions_", 1)).with_suffix(".jsonl")
        with atomic_file(predictions) as tmp:
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        print(f"wrote {predictions}")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp_path", required=True, help="run folder written by a run_*.py script")
    p.add_argument("--checkpoint", default="best", help="model folder inside the run (best)")
    p.add_argument("--split", default="test", help="dataset split to evaluate")
    p.add_argument("--K", type=int, default=None, help="WRITE steps (default: the trained K)")
    p.add_argument("--data_path", default=None, help="dataset folder (default: the run's own data)")
    p.add_argument("--batch_size", type=int, default=None, help="evaluation batch size")
    p.add_argument("--max_samples", type=int, default=None, help="evaluate at most this many samples")
    p.add_argument("--generate", action=argparse.BooleanOptionalAction, default=True,
                   help="also answer by greedy generation and score the text (default: %(default)s)")
    p.add_argument("--max_new_tokens", type=int, default=None,
                   help="generation length limit (default: the longest answer in the split + 2)")
    p.add_argument("--out", default=None, help="JSON file for the results (default: EXP_PATH/eval_<split>_K<K>.json)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result, records = run_evaluation(args.exp_path, args.split, args.K, args.data_path, args.checkpoint,
                                         args.batch_size, args.max_samples, args.generate, args.max_new_tokens)
    except (FileNotFoundError, ValueError, ConnectionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for key in ("exact_match", "token_accuracy", "generated_exact_match", "generated_f1", "state_bytes_per_context"):
        if key in result:
            print(f"{key}: {result[key]}")
    save_results(result, records, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
