"""Second-order cost: the reference GradMem step (llama L4 H4 D128, 8 memory tokens, N16-K2V2, batch 64)
for each grad mode, attention implementation, K in {1, 2, 5}, without inner-step recomputation, with it,
and with it in 4 batch chunks (second order only: first-order steps keep no graph to recompute).

Prints median step time and peak memory (peak RSS on CPU, torch.cuda.max_memory_allocated on GPU) as a
markdown table, then the targets against eager second order at K=2 without recomputation.

    python bench/second_order_step.py                  # the whole grid (about 10 minutes on 2 CPU cores)
    python bench/second_order_step.py --K 2 --grad_modes second
"""
import argparse
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import add_measure_args, measure  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grad_modes", nargs="+", default=["none", "first", "second"], help="grad modes to measure")
    p.add_argument("--attn", nargs="+", default=None,
                   help="attention implementations (default: eager and gradmem_manual; gradmem_triton too on CUDA)")
    p.add_argument("--K", type=int, nargs="+", default=[1, 2, 5], help="inner steps to measure")
    add_measure_args(p)
    p.set_defaults(repeats=3)
    args = p.parse_args()
    import torch

    attn = args.attn or ["eager", "gradmem_manual"] + (["gradmem_triton"] if torch.cuda.is_available() else [])
    rows = []
    print("| grad_mode | attention | K | recompute | median s/step | peak MB |\n|---|---|---|---|---|---|", flush=True)
    for mode, impl, K, chunks in itertools.product(args.grad_modes, attn, args.K, (0, 1, 4)):
        if chunks and mode != "second":
            continue  # only second-order steps keep a graph to recompute
        setting = {"model": "gradmem", "grad_mode": mode, "attn_implementation": impl, "K": K}
        if chunks:
            setting.update(recompute_inner_steps=True, recompute_chunks=chunks)
        r = measure(setting, args)
        rows.append((mode, impl, K, chunks, r))
        cells = f"{r['median_s']:.3f} | {r['peak_mb']:.0f}" if "error" not in r else f"failed: {r['error']} | -"
        label = {0: "off", 1: "on", 4: "on, 4 chunks"}[chunks]
        print(f"| {mode} | {impl} | {K} | {label} | {cells} |", flush=True)
    report_targets(rows)


def report_targets(rows):
    ok = {(m, a, K, rc): r for m, a, K, rc, r in rows if "error" not in r}
    base = ok.get(("second", "eager", 2, 0))
    if base is None:
        return
    second2 = {k: r for k, r in ok.items() if k[0] == "second" and k[2] == 2}
    fastest_key, fastest = min(second2.items(), key=lambda kv: kv[1]["median_s"])
    lean = {k: r for k, r in second2.items() if k[3]}
    print(f"\nbaseline: eager second order K=2, no recomputation: {base['median_s']:.3f} s/step, {base['peak_mb']:.0f} MB")
    print(f"fastest second-order K=2 setting {fastest_key[1:]}: {fastest['median_s'] / base['median_s']:.2f}x time "
          f"(target <= 0.8x)")
    if lean:
        lean_key, leanest = min(lean.items(), key=lambda kv: kv[1]["peak_mb"])
        print(f"leanest setting {lean_key[1:]}: {leanest['peak_mb'] / base['peak_mb']:.2f}x memory (target <= 0.4x) "
              f"at {leanest['median_s'] / base['median_s']:.2f}x time (target <= 1.2x)")
        for impl, chunks in sorted({k[1::2] for k in lean}):
            k1, k5 = ok.get(("second", impl, 1, chunks)), ok.get(("second", impl, 5, chunks))
            if k1 and k5:
                print(f"recomputation ({chunks} chunk(s)), {impl}: peak memory K=5 / K=1 = "
                      f"{k5['peak_mb'] / k1['peak_mb']:.2f} (target <= 1.3)")


if __name__ == "__main__":
    main()
