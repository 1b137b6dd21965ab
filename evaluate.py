"""Re-evaluate a saved run on any split with any number of WRITE steps.

    python evaluate.py --exp_path runs/gradmem --split test --K 5

prints exact match, token accuracy and bytes of state per context, and writes them as JSON
(default: EXP_PATH/eval_<split>_K<K>.json). ``--K`` larger than the trained K tests extrapolation.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import kv_dataset_utils as kv
from io_utils import atomic_file
from training import MODEL_CLASSES, TrainConfig, evaluate, load_data


def load_run(exp_path: Path, checkpoint: str = "best"):
    """(model, tokenizer, train config) of a run folder written by training.train."""
    config_file = exp_path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{exp_path} is not a run folder (no config.json): pass the --exp_path of a training run.")
    config = json.loads(config_file.read_text())
    model = MODEL_CLASSES[config["model_type"]].from_pretrained(
        exp_path / checkpoint, attn_implementation=config["backbone"]["attn_implementation"])
    tokenizer = kv.load_tokenizer(exp_path / "tokenizer")
    return model, tokenizer, TrainConfig(**config["train"])


def run_evaluation(exp_path, split="test", K=None, data_path=None, checkpoint="best", batch_size=None,
                   max_samples=None) -> dict:
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    exp_path = Path(exp_path)
    model, tokenizer, cfg = load_run(exp_path, checkpoint)
    if data_path:
        cfg.data_path = data_path
    ds = load_data(cfg, splits=(split,))[split]
    if max_samples:
        ds = ds.select(range(min(max_samples, len(ds))))
    accelerator = Accelerator()
    dl = DataLoader(ds, batch_size=batch_size or cfg.eval_batch_size or cfg.per_device_batch_size,
                    collate_fn=kv.KVCollator(tokenizer, max_context_length=cfg.max_context_length))
    model, dl = accelerator.prepare(model, dl)
    metrics = evaluate(model, dl, accelerator, tokenizer.convert_tokens_to_ids(["!", "|"]), K=K)
    unwrapped = accelerator.unwrap_model(model)
    context_length = max(len(c) for c in ds["context"])
    return {"exp_path": str(exp_path), "model_type": unwrapped.model_type, "split": split, "n_samples": len(ds),
            "K": K if K is not None else getattr(unwrapped.config, "K", None),
            "state_bytes_per_context": unwrapped.state_bytes_per_context(context_length), **metrics}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp_path", required=True, help="run folder written by a run_*.py script")
    p.add_argument("--checkpoint", default="best", help="model folder inside the run (best)")
    p.add_argument("--split", default="test", help="dataset split to evaluate")
    p.add_argument("--K", type=int, default=None, help="WRITE steps (default: the trained K)")
    p.add_argument("--data_path", default=None, help="dataset folder (default: the run's own data)")
    p.add_argument("--batch_size", type=int, default=None, help="evaluation batch size")
    p.add_argument("--max_samples", type=int, default=None, help="evaluate at most this many samples")
    p.add_argument("--out", default=None, help="JSON file for the results (default: EXP_PATH/eval_<split>_K<K>.json)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run_evaluation(args.exp_path, args.split, args.K, args.data_path, args.checkpoint, args.batch_size,
                                args.max_samples)
    except (FileNotFoundError, kv.KVDataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for key in ("exact_match", "token_accuracy", "state_bytes_per_context"):
        print(f"{key}: {result[key]}")
    out = Path(args.out or Path(args.exp_path) / f"eval_{args.split}_K{result['K']}.json")
    with atomic_file(out) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
