"""Second-order cost of one attention call by number of causal query bands (``attn_double_bwd/manual.py``).

One measured call is what an inner step asks of attention: the forward, its gradient with ``create_graph``
(the inner step's backward) and the backward through that gradient (the outer, second-order backward), at the
preset's per-layer shape by default (batch 64, 4 heads, 120 context positions, head size 32) under a causal mask.
``eager`` is plain autograd attention (``reference_attention``); ``bands N`` is ``gradmem_manual`` in N bands.
Prints the median of ``--repeats`` calls per setting, alternating the settings, and the largest difference from
eager over the outputs and the three second-order gradients.

    python bench/attention_bands.py                       # eager and 1, 2, 3, 4, 8 bands
    python bench/attention_bands.py --bands 1 3 --repeats 9
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from attn_double_bwd.manual import _Attention, _causal_bands, reference_attention  # noqa: E402


def causal_bias(t: int, s: int, dtype) -> torch.Tensor:
    """``[1, 1, t, s]`` additive mask: the ``t`` queries are the last ``t`` of ``s`` positions."""
    allowed = torch.ones(t, s, dtype=torch.bool).tril(diagonal=s - t)
    return torch.zeros(1, 1, t, s, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)


def second_order_call(attention, q, k, v, w):
    """Forward, inner gradient with a graph, outer backward through it; returns (out, grad q, grad k, grad v)."""
    out = attention(q, k, v)
    grads = torch.autograd.grad((out * w).sum(), (q, k, v), create_graph=True)
    outer = torch.autograd.grad(sum(g.square().sum() for g in grads), (q, k, v))
    return (out.detach(), *outer)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", type=int, nargs=4, default=[64, 4, 120, 32], metavar=("B", "H", "T", "D"),
                   help="batch, heads, positions (queries = keys), head size")
    p.add_argument("--bands", type=int, nargs="+", default=[1, 2, 3, 4, 8], help="numbers of causal bands to time")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per setting (the median is printed)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per setting first")
    args = p.parse_args()
    B, H, T, D = args.shape
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, generator=g, requires_grad=True) for _ in range(3))
    w = torch.randn(B, H, T, D, generator=g)
    bias, scale = causal_bias(T, T, q.dtype), D ** -0.5
    settings = {"eager": lambda q, k, v: reference_attention(q, k, v, bias, scale)}
    for n in args.bands:
        settings[f"bands {n}"] = lambda q, k, v, bands=_causal_bands(T, T, n): _Attention.apply(
            q, k, v, bias, scale, None, bands)
    reference = second_order_call(settings["eager"], q, k, v, w)
    error = {name: max((a - b).abs().max().item() for a, b in zip(second_order_call(f, q, k, v, w), reference))
             for name, f in settings.items()}
    times = {name: [] for name in settings}
    for _ in range(args.warmup):
        for f in settings.values():
            second_order_call(f, q, k, v, w)
    for _ in range(args.repeats):
        for name, f in settings.items():
            start = time.perf_counter()
            second_order_call(f, q, k, v, w)
            times[name].append(time.perf_counter() - start)
    print(f"shape [B, H, T, D] = {args.shape}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print("| attention | ms per second-order call | vs eager | max abs difference from eager |")
    print("|---|---|---|---|")
    base = statistics.median(times["eager"])
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"| {name} | {1e3 * t:.1f} | {t / base:.2f}x | {error[name]:.1e} |")


if __name__ == "__main__":
    main()
