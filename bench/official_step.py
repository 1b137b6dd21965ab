"""The official GradMem implementation's training step at the reference preset, timed on this machine the
way ``bench/train_step.py`` times ours: the same batch (N16-K2V2-V62 contexts, batch 64, seed 0), the same
llama L4 H4 D128 config, AdamW, median over the timed steps after the warm-up, peak RSS (or CUDA memory).

The preset (its ``scripts/run_gradmemgpt_on_kv_retrieval.sh``): 8 memory tokens, inner SGD at lr 0.04,
second order, write head, inner-loss weight 0.5, eager attention. Point ``--repo`` at a checkout of the
official code; nothing of it is copied here. Its modules share names with ours (``grad_memgpt``,
``attn_double_bwd``), so each measurement imports them in a fresh process that has not imported ours.

    python bench/official_step.py --repo ~/src/gradmem --K 2 5
    python bench/second_order_step.py --official_repo ~/src/gradmem   # ratios against this machine's figures
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import (ROOT, add_measure_args, after_timing, backward_in_parts, child_result, measure_flags,  # noqa: E402
                        reference_batch, timed_steps)


def measure_official(repo: str, Ks, args, micro_batches: int = 1) -> dict[int, dict]:
    """Write the reference batch and backbone config to a temporary folder once, then time the official step
    on them in a fresh process per K, each step in ``micro_batches`` parts (gradient accumulation, which its
    own training loop offers too); by K, its result dict (``median_s``, ``min_s``, ``peak_mb``) or
    ``{"error": ...}``."""
    from safetensors.torch import save_file

    from backbones import BackboneConfig, build_backbone

    if not (Path(repo) / "grad_memgpt.py").is_file():
        raise SystemExit(f"--repo {repo}: no grad_memgpt.py there; point it at a checkout of the official GradMem "
                         "code (the folder with grad_memgpt.py and attn_double_bwd/).")
    tok, batch = reference_batch(args.n_pairs, args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        save_file({k: v.contiguous() for k, v in batch.items()}, f"{tmp}/batch.safetensors")
        Path(tmp, "backbone.json").write_text(build_backbone(BackboneConfig(), tok).config.to_json_string())
        results = {}
        for K in Ks:
            res = subprocess.run([sys.executable, __file__, "--child", tmp, "--repo", repo, "--K", str(K),
                                  "--micro_batches", str(micro_batches), *measure_flags(args)],
                                 capture_output=True, text=True, cwd=ROOT)
            results[K] = child_result(res, f"profile of the official step at K={K}", args)
    return results


def run_child(folder: str, repo: str, K: int, args) -> dict:
    """In this process: build the official model at the preset on the saved config, time it on the saved batch."""
    sys.path.insert(0, str(Path(repo).resolve()))  # ahead of ours: its grad_memgpt and attn_double_bwd
    import torch
    from grad_memgpt import GradMemGPT, GradMemGPTConfig
    from safetensors.torch import load_file
    from transformers import AutoConfig

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batch = {k: v.to(device) for k, v in load_file(f"{folder}/batch.safetensors").items()}
    config = GradMemGPTConfig(base_config=AutoConfig.from_pretrained(folder + "/backbone.json"), n_mem_tokens=8, K=K,
                              lr=0.04, grad_mode="second", use_write_head=True, add_inner_loss_to_outer=True,
                              inner_loss_weight=0.5, attn_implementation="eager")
    model = GradMemGPT(config).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rows_loss = lambda rows: model({k: batch[k][rows] for k in ("context_input_ids", "query_input_ids")},  # noqa: E731
                                   labels=batch["labels"][rows])["loss"]
    step = lambda: backward_in_parts(rows_loss, len(batch["labels"]), args.micro_batches)  # noqa: E731
    return {**timed_steps(step, opt, args.warmup, args.repeats, device), **after_timing(step, opt, device, args),
            "device": device}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", required=True, help="a checkout of the official GradMem code (holds grad_memgpt.py)")
    p.add_argument("--K", type=int, nargs="+", default=[2], help="inner steps to measure")
    p.add_argument("--micro_batches", type=int, default=1,
                   help="run each step in this many parts, accumulating their gradients (1: the whole batch at once)")
    add_measure_args(p)
    p.set_defaults(repeats=3)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child, args.repo, args.K[0], args)))
        return
    print("| official, K | median s/step | peak MB |\n|---|---|---|", flush=True)
    for K, r in measure_official(args.repo, args.K, args, args.micro_batches).items():
        cells = f"{r['median_s']:.3f} | {r['peak_mb']:.0f}" if "error" not in r else f"failed: {r['error']} | -"
        print(f"| {K} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
