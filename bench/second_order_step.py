"""Second-order cost at the reference preset (llama L4 H4 D128, 8 memory tokens, N16-K2V2 contexts, batch 64,
inner SGD lr 0.04, write head, inner-loss weight 0.5) for each grad mode, attention implementation, K,
inner-loss term (``final``: L_write(M_K), a fresh WRITE forward; ``last_step``: L_write(M_{K-1}), free, as in
the official implementation) and recomputation: off, on (every second-order step but the last is rebuilt in
the outer backward), on in 4 batch chunks (the last step keeps only its last chunk's graph). First-order
steps keep no graph, so they are never recomputed. ``--micro_batches`` adds the other way to save memory: the
whole step (WRITE, READ, backward) in n parts whose gradients accumulate, which the training loop offers as
``--gradient_accumulation_steps``; it recomputes nothing. ``--kernels compiled`` runs the backbone's hand-derived
SwiGLU and RMSNorm (``double_bwd_layers.py``) through ``torch.compile``, as the preset script does.

Prints median step time and peak memory (peak RSS on CPU, torch.cuda.max_memory_allocated on GPU) as a
markdown table, then the ratios against the official implementation's figures at the same preset and the
targets: the figures measured on the project's 2-core CPU machine (issue 17), or, with ``--official_repo``,
the official code timed here and now by ``bench/official_step.py`` at each K measured.

    python bench/second_order_step.py                           # second order, the whole grid
    python bench/second_order_step.py --K 2 --attn eager --inner_loss_memory last_step --chunks 0
    python bench/second_order_step.py --grad_modes none first --chunks 0
    python bench/second_order_step.py --K 2 --attn eager --inner_loss_memory last_step --chunks 0 --profile 20
    python bench/second_order_step.py --K 2 --attn eager --inner_loss_memory last_step --chunks 0 --top_ops 30
    python bench/second_order_step.py --K 2 --attn eager --inner_loss_memory last_step --chunks 0 --kernels eager compiled
    python bench/second_order_step.py --K 2 5 --inner_loss_memory last_step --official_repo ~/src/gradmem
    python bench/second_order_step.py --K 2 5 --inner_loss_memory last_step --chunks 0 --micro_batches 1 8 --breakdown
    python bench/second_order_step.py --attn eager --K 2 5 --inner_loss_memory last_step --chunks 0 4 \
        --micro_batches 1 8 --rounds 4 --breakdown --official_repo ~/src/gradmem --csv bench/results/second_order.csv
"""
import argparse
import itertools
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from official_step import measure_official  # noqa: E402
from train_step import add_measure_args, measure  # noqa: E402
from sweeps import write_rows  # noqa: E402  # importable: train_step puts the repository root on sys.path

# the official implementation at the preset on the project's CPU machine (issue 17): s/step by K (none known at
# K=5), peak RSS in MB by K
ISSUE_FIGURES = {"source": "issue 17, 2-core CPU", "s": {2: (2.13, 2.27)}, "mb": {2: (5000, 5400), 5: (12000, 15000)}}
TARGETS = {"preset time": 0.8, "lean memory": 0.3, "lean time": 1.0, "K=5 lean memory": 0.15}
CSV_COLUMNS = ("implementation", "grad_mode", "attention", "K", "inner_loss_memory", "recompute_chunks",
               "micro_batches", "kernels", "rounds", "median_s", "low_s", "high_s", "min_s", "peak_mb", "kernel_s",
               "minor_faults", "matmul_s", "other_s", "ops", "matmul_gflop", "time_vs_official",
               "time_vs_official_by_round", "memory_vs_official", "device", "error")
TABLE_HEADER = ("grad_mode | attention | K | inner-loss term | recompute | micro-batches | kernels | median s/step | "
                "peak MB")
CENSUS_HEADER = ("matrix products s | the rest s | op calls | matrix-product GFLOP | kernel s/step | "
                 "minor faults/step")


def preset_key(K: int, kernels: str = "compiled") -> tuple:
    """The official preset's setting at K as one of our keys: (grad mode, attention, K, inner-loss term,
    recompute chunks (0: off), micro-batches, kernels). ``scripts/run_gradmemgpt_on_kv_retrieval.sh`` compiles
    the kernels; ``eager`` is the same step without."""
    return ("second", "eager", K, "last_step", 0, 1, kernels)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grad_modes", nargs="+", default=["second"], help="grad modes to measure")
    p.add_argument("--attn", nargs="+", default=None,
                   help="attention implementations (default: eager and gradmem_manual; gradmem_triton too on CUDA)")
    p.add_argument("--K", type=int, nargs="+", default=[1, 2, 5], help="inner steps to measure")
    p.add_argument("--inner_loss_memory", nargs="+", default=["final", "last_step"], choices=["final", "last_step"],
                   help="inner-loss terms to measure")
    p.add_argument("--chunks", type=int, nargs="+", default=[0, 1, 4],
                   help="recomputation: 0 off, n on in n batch chunks (second order only)")
    p.add_argument("--micro_batches", type=int, nargs="+", default=[1],
                   help="run each step in n parts, accumulating their gradients (1: the whole batch at once)")
    p.add_argument("--kernels", nargs="+", default=["eager"], choices=["eager", "compiled"],
                   help="the hand-derived SwiGLU and RMSNorm kernels as they are (eager) or through torch.compile "
                        "(compiled, as in the preset script; the first step compiles); needs --double_bwd_layers")
    p.add_argument("--inner_loss_weight", type=float, default=0.5, help="inner-loss weight of the preset")
    p.add_argument("--use_write_head", action=argparse.BooleanOptionalAction, default=True,
                   help="separate WRITE head, as in the preset")
    p.add_argument("--double_bwd_layers", action=argparse.BooleanOptionalAction, default=True,
                   help="the backbone's hand-derived SwiGLU and RMSNorm (double_bwd_layers.py, the default); "
                        "--no-double_bwd_layers measures transformers' own modules")
    p.add_argument("--official_repo", metavar="PATH",
                   help="a checkout of the official GradMem code: time its preset step here at each K measured and "
                        "take the ratios against that, rather than against issue 17's figures")
    p.add_argument("--csv", metavar="PATH",
                   help="also write every setting's figures (medians over the rounds so far) to this CSV, rewritten "
                        "whole after each round")
    p.add_argument("--rounds", type=int, default=1,
                   help="measure every setting (and the official step) this many times, in turn, and report the "
                        "median over the rounds: this machine drifts, and the official step more than ours")
    add_measure_args(p)
    p.set_defaults(repeats=3)
    args = p.parse_args()
    if args.csv and Path(args.csv).is_dir():
        p.error(f"--csv {args.csv} is a folder: give a file path, such as {Path(args.csv) / 'second_order.csv'}")
    import torch

    from backbones import BackboneConfig

    try:  # the backbone's own check, before any child process builds one
        BackboneConfig(double_bwd_layers=args.double_bwd_layers, compile_double_bwd_layers="compiled" in args.kernels)
    except ValueError as e:
        p.error(str(e))

    attn = args.attn or ["eager", "gradmem_manual"] + (["gradmem_triton"] if torch.cuda.is_available() else [])
    settings = []
    for mode, impl, K, memory, chunks, micro, kernels in itertools.product(
            args.grad_modes, attn, args.K, args.inner_loss_memory, args.chunks, args.micro_batches, args.kernels):
        if chunks and mode != "second":
            continue  # only second-order steps keep a graph to recompute
        setting = {"model": "gradmem", "grad_mode": mode, "attn_implementation": impl, "K": K,
                   "use_write_head": args.use_write_head, "inner_loss_weight": args.inner_loss_weight,
                   "inner_loss_memory": memory, "double_bwd_layers": args.double_bwd_layers,
                   "compile_double_bwd_layers": kernels == "compiled"}
        if chunks:
            setting.update(recompute_inner_steps=True, recompute_chunks=chunks)
        settings.append(((mode, impl, K, memory, chunks, micro, kernels), setting))
    at_preset = (args.batch_size, args.n_pairs, args.inner_loss_weight, args.use_write_head) == (64, 16, 0.5, True)
    time_official = at_preset and args.official_repo
    ours, official = defaultdict(list), defaultdict(list)
    print(f"backbone layers: {'hand-derived SwiGLU and RMSNorm' if args.double_bwd_layers else 'transformers'}\n")
    print(f"| {'round | ' if args.rounds > 1 else ''}{TABLE_HEADER} |\n|{'---|' * (9 + (args.rounds > 1))}", flush=True)
    for round_ in range(1, args.rounds + 1):
        prefix = f"{round_} | " if args.rounds > 1 else ""
        for key, setting in settings:
            ours[key].append(measure(setting, args, key[5]))
            print(f"| {prefix}{row_cells(key, ours[key][-1])} |", flush=True)
        if time_official:
            for K, r in measure_official(args.official_repo, args.K, args).items():
                official[K].append(r)
                key = ("official: second", *preset_key(K, "-")[1:])  # the preset, in our table's columns
                print(f"| {prefix}{row_cells(key, r)} |", flush=True)
        if args.csv:
            write_rows(args.csv, csv_rows(ours, official, ours_name(args)), CSV_COLUMNS)
    rows = [(key, over_rounds(results)) for key, results in ours.items()]
    if args.rounds > 1:
        print(f"\nmedian over {args.rounds} rounds (the range of the rounds' medians in brackets)\n\n| {TABLE_HEADER} |"
              f"\n|{'---|' * 9}")
        for key, r in rows:
            print(f"| {row_cells(key, r)} |")
    timed = [(key, r) for key, r in rows if "matmul_s" in r]
    if timed:
        print(f"\none more step, op by op: seconds in matrix products and in the rest, op calls and matrix-product "
              f"GFLOP; and per timed step, kernel CPU seconds and minor page faults\n\n| setting | {CENSUS_HEADER} |"
              f"\n|{'---|' * 7}")
        for key, r in timed:
            print(f"| {describe(key)} | {census_cells(r)} |")
    if time_official:
        report_targets(rows, official_figures(official, args.official_repo))
    elif at_preset and "cuda" not in {r.get("device") for _, r in rows}:  # the issue's figures: CPU, at the preset
        report_targets(rows, ISSUE_FIGURES)


def ours_name(args) -> str:
    """The CSV's ``implementation`` of our rows: which layers the backbone ran."""
    return "ours" if args.double_bwd_layers else "ours, transformers layers"


def csv_rows(ours: dict[tuple, list[dict]], official: dict[int, list[dict]], name: str = "ours") -> list[dict]:
    """One CSV row per setting, ours (by key, ``implementation`` ``name``) and then the official step's (by K, at the preset), each its
    median over the rounds (``over_rounds``); floats to 4 decimals. Ours, where the official step was measured
    at the same K, with its time and peak memory over the official step's (medians over medians), and
    ``time_vs_official_by_round``: the median of the time ratios within each round, which the machine's drift
    between rounds moves less."""
    reference = {K: over_rounds(r) for K, r in official.items()}
    rows = []
    for implementation, key, results in [(name, key, r) for key, r in ours.items()] + [
            ("official", preset_key(K, "-"), r) for K, r in official.items()]:
        r, ref = over_rounds(results), reference.get(key[2], {})
        if implementation == name and "error" not in r and "median_s" in ref:
            by_round = [a["median_s"] / b["median_s"] for a, b in zip(results, official[key[2]])
                        if "error" not in a and "error" not in b]
            r = {**r, "time_vs_official": r["median_s"] / ref["median_s"],
                 "time_vs_official_by_round": statistics.median(by_round),
                 "memory_vs_official": r["peak_mb"] / ref["peak_mb"]}
        rows.append({"implementation": implementation, **dict(zip(CSV_COLUMNS[1:8], key)),
                     **{c: round(v, 4) if isinstance(v, float) else v for c, v in r.items() if c in CSV_COLUMNS}})
    return rows


def row_cells(key, r: dict) -> str:
    mode, impl, K, memory, chunks, micro, kernels = key
    label = "off" if not chunks else "on" if chunks == 1 else f"on, {chunks} chunks"
    return f"{mode} | {impl} | {K} | {memory} | {label} | {micro} | {kernels} | {time_cell(r)} | " + (
        f"{r['peak_mb']:.0f}" if "error" not in r else "-")


def time_cell(r: dict) -> str:
    if "error" in r:
        return f"failed: {r['error']}"
    spread = f" ({r['low_s']:.3f}-{r['high_s']:.3f})" if r.get("rounds", 1) > 1 else ""
    return f"{r['median_s']:.3f}{spread}"


def over_rounds(results: list[dict]) -> dict:
    """One setting's measurements, one per round, as one: the median of each figure, and the range of the
    rounds' median times (``low_s``, ``high_s``); the first error when every round failed."""
    ok = [r for r in results if "error" not in r]
    if not ok:
        return results[0]
    figures = {name: statistics.median(r[name] for r in ok) for name in ok[0] if isinstance(ok[0][name], float)}
    times = [r["median_s"] for r in ok]
    return {**ok[0], **figures, "low_s": min(times), "high_s": max(times), "rounds": len(ok)}


def official_figures(official: dict[int, list[dict]], repo: str) -> dict:
    """The official step's measurements by K (``bench/official_step.py``, one per round) as the figures to
    judge against: each K's median over the rounds, as a point range."""
    figures = {"source": f"measured here from {repo}", "s": {}, "mb": {}}
    print(f"\n| official, K | median s/step | peak MB | {CENSUS_HEADER} |\n|{'---|' * 9}", flush=True)
    for K, results in official.items():
        r = over_rounds(results)
        if "error" in r:
            print(f"| {K} | failed: {r['error']} | - |{' - |' * 6}", flush=True)
            continue
        figures["s"][K], figures["mb"][K] = (r["median_s"],) * 2, (r["peak_mb"],) * 2
        print(f"| {K} | {time_cell(r)} | {r['peak_mb']:.0f} | {census_cells(r)} |", flush=True)
    return figures


def census_cells(r: dict) -> str:
    """The op-by-op step (``--breakdown``: its seconds, op calls, GFLOP; dashes without it) and the timed steps'
    kernel seconds and page faults, as table cells under ``CENSUS_HEADER``."""
    ops = (f"{r['matmul_s']:.3f} | {r['other_s']:.3f} | {r['ops']:,} | {r['matmul_gflop']:.1f}" if "matmul_s" in r
           else "- | - | - | -")
    return f"{ops} | {r['kernel_s']:.3f} | {r['minor_faults']:,.0f}"


def ratio(ours: float, official: tuple[float, float]) -> str:
    """``ours`` against an official range: ``ours / high - ours / low`` (one figure for a measured point)."""
    low, high = f"{ours / official[1]:.2f}", f"{ours / official[0]:.2f}"
    return f"{low}x" if low == high else f"{low}-{high}x"


def span(figures: tuple[float, float], digits: int) -> str:
    low, high = (f"{f:,.{digits}f}" for f in figures)
    return low if low == high else f"{low}-{high}"


def verdict(ours: float, official: tuple[float, float], target: float) -> str:
    """Met when ``ours`` is within ``target`` times even the official implementation's best figure."""
    return "met" if ours <= target * official[0] else "missed"


def report_targets(rows, official: dict) -> None:
    """Ratios against the official implementation's figures (``official``: its ``source``, and (low, high)
    s/step and peak MB by K) at the preset (K=2) and at K=5, with the issue's targets. A key is (grad mode,
    attention, K, inner-loss term, recompute chunks (0: off), micro-batches, kernels)."""
    ok = {key: r for key, r in rows if "error" not in r}
    second = {key: r for key, r in ok.items() if key[0] == "second"}
    known = "; ".join(f"K={K}: " + ", ".join(([f"{span(official['s'][K], 3)} s/step"] if K in official["s"] else []) +
                                              [f"{span(official['mb'][K], 0)} MB"]) for K in sorted(official["mb"]))
    print(f"\nofficial implementation at the preset ({official['source']}): {known}")
    if 2 not in official["s"] or 2 not in official["mb"]:
        return
    official_s, official_mb = official["s"][2], official["mb"]
    for kernels in ("compiled", "eager"):
        preset = second.get(preset_key(2, kernels))
        if not preset:
            continue
        t = preset["median_s"]
        name = "preset" if kernels == "compiled" else "the preset with eager kernels"
        print(f"{name} {describe(preset_key(2, kernels))}: {t:.3f} s/step = {ratio(t, official_s)} the official time "
              f"(target <= {TARGETS['preset time']}x: {verdict(t, official_s, TARGETS['preset time'])}), "
              f"{preset['peak_mb']:.0f} MB = {ratio(preset['peak_mb'], official_mb[2])} its memory")
        if "matmul_s" in preset:
            print(f"  its matrix products alone (op by op): {preset['matmul_s']:.3f} s = "
                  f"{ratio(preset['matmul_s'], official_s)} the official time")
    k2 = {key: r for key, r in second.items() if key[2] == 2 and key[3] == "last_step"}
    if k2:
        key, fastest = min(k2.items(), key=lambda kv: kv[1]["median_s"])
        print(f"fastest K=2 last_step setting {describe(key)}: {fastest['median_s']:.3f} s/step = "
              f"{ratio(fastest['median_s'], official_s)} the official time")
    families = {"recomputation": lambda key: key[4] and key[5] == 1,
                "micro-batches": lambda key: key[5] > 1 and not key[4]}
    for family, member in families.items():
        lean = {key: r for key, r in k2.items() if member(key)}
        if lean:
            report_lean(family, lean, second, official)


def report_lean(family: str, lean: dict, second: dict, official: dict) -> None:
    """The leanest of ``lean`` (K=2 settings of one memory-saving family) against the targets; where it is another
    setting, the fastest of ``lean`` within the lean memory target, which is what the lean time target asks of the
    family; then the leanest's K=5 counterpart in ``second`` against the K=5 memory target."""
    official_mb = official["mb"]
    key, leanest = min(lean.items(), key=lambda kv: kv[1]["peak_mb"])
    print(lean_line(f"lean by {family}: the leanest K=2 last_step setting", key, leanest, official))
    within = {k: r for k, r in lean.items() if verdict(r["peak_mb"], official_mb[2], TARGETS["lean memory"]) == "met"}
    fastest_key = min(within, key=lambda k: within[k]["median_s"], default=key)
    if fastest_key != key:
        print(lean_line(f"lean by {family}: the fastest K=2 last_step setting within {TARGETS['lean memory']}x the "
                        "official memory", fastest_key, within[fastest_key], official))
    key5 = key[:2] + (5,) + key[3:]
    k5 = second.get(key5)
    if k5 and 5 in official_mb:
        mb5, t5 = k5["peak_mb"], k5["median_s"]
        time5 = f" = {ratio(t5, official['s'][5])} the official K=5 time" if 5 in official["s"] else ""
        print(f"lean by {family} at K=5 {describe(key5)}: {mb5:.0f} MB = {ratio(mb5, official_mb[5])} the official K=5 "
              f"memory (target <= {TARGETS['K=5 lean memory']}x: "
              f"{verdict(mb5, official_mb[5], TARGETS['K=5 lean memory'])}), at {t5:.3f} s/step{time5}")
    for key, r in sorted(lean.items()):
        k1, k5 = second.get(key[:2] + (1,) + key[3:]), second.get(key[:2] + (5,) + key[3:])
        if k1 and k5:
            print(f"{family} {describe(key)}: peak memory K=5 / K=1 = {k5['peak_mb'] / k1['peak_mb']:.2f}")


def lean_line(label: str, key, r: dict, official: dict) -> str:
    """``label`` and ``key``'s setting with its K=2 memory and time against the official figures and the lean targets."""
    official_s, official_mb, mb, t = official["s"][2], official["mb"][2], r["peak_mb"], r["median_s"]
    return (f"{label} {describe(key)}: {mb:.0f} MB = {ratio(mb, official_mb)} the official memory (target <= "
            f"{TARGETS['lean memory']}x: {verdict(mb, official_mb, TARGETS['lean memory'])}) at {t:.3f} s/step = "
            f"{ratio(t, official_s)} its time (target <= {TARGETS['lean time']}x: "
            f"{verdict(t, official_s, TARGETS['lean time'])})")


def describe(key) -> str:
    mode, impl, K, memory, chunks, micro, kernels = key
    parts = [impl, f"K={K}", memory, f"recompute {'off' if not chunks else f'in {chunks} chunk(s)'}"]
    parts += [f"{micro} micro-batches"] if micro > 1 else []
    parts += ["compiled kernels"] if kernels == "compiled" else []
    return f"({', '.join(parts)})"


if __name__ == "__main__":
    main()
