"""Median time and peak memory of one training step (forward, backward, AdamW step), and the bytes of
state each model keeps per context.

Reference setting: llama L4 H4 D128, 8 memory tokens, K=2, N16-K2V2-V62 contexts, batch 64.
Each setting runs in a fresh subprocess, so its peak memory (peak RSS on CPU,
``torch.cuda.max_memory_allocated`` on GPU) is its own.

    python bench/train_step.py                                      # GradMem (3 grad modes) and the baselines
    python bench/train_step.py --setting model=gradmem grad_mode=second K=5
    python bench/train_step.py --setting model=rmt K=1 mem_proj_mode=proj

A setting names ``model`` (gradmem, rmt, full_context, mamba), optionally the backbone's ``attn_implementation``
``double_bwd_layers`` and ``compile_double_bwd_layers``, and any fields of that model's config.
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MATMUL_OPS = {"mm", "bmm", "addmm", "baddbmm", "addbmm", "convolution"}  # aten ops as dispatched, for op_seconds


def parse_setting(words: list[str]) -> dict:
    """``["grad_mode=second", "K=5"]`` -> ``{"grad_mode": "second", "K": 5}`` (values parsed as JSON when they can be)."""
    out = {}
    for w in words:
        key, _, value = w.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def run_one(setting: dict, args) -> dict:
    """Build the model in this process, time ``args.repeats`` steps after ``args.warmup``, report."""
    import torch

    from backbones import BackboneConfig, build_backbone
    from full_context import FullContextLM
    from grad_memgpt import GradMemConfig, GradMemGPT
    from rmt import RMT, RMTConfig

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok, batch = reference_batch(args.n_pairs, args.batch_size)
    setting = dict(setting)
    name = setting.pop("model", "gradmem")
    backbone = BackboneConfig(base_model="mamba" if name == "mamba" else "llama",
                              attn_implementation=setting.pop("attn_implementation", "eager"),
                              double_bwd_layers=setting.pop("double_bwd_layers", True),
                              compile_double_bwd_layers=setting.pop("compile_double_bwd_layers", False))
    lm = build_backbone(backbone, tok)
    if name == "gradmem":
        model = GradMemGPT(lm, GradMemConfig(**setting))
    elif name == "rmt":
        model = RMT(lm, RMTConfig(**setting))
    else:
        model = FullContextLM(lm)
    model = model.to(device).train()
    batch = {k: v.to(device) for k, v in batch.items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rows_loss = lambda rows: model(**{k: v[rows] for k, v in batch.items()}).loss  # noqa: E731
    step = lambda: backward_in_parts(rows_loss, len(batch["labels"]), args.micro_batches)  # noqa: E731
    result = {**timed_steps(step, opt, args.warmup, args.repeats, device), **after_timing(step, opt, device, args)}
    context_length = int((batch["context_input_ids"] != 0).sum(1).max())
    return {**result, "device": device, "state_bytes": model.state_bytes_per_context(context_length)}


def after_timing(step, opt, device: str, args) -> dict:
    """What the flags ask of a measuring child after its timed steps: the op-by-op census (``--breakdown``,
    ``--top_ops``), whose figures it returns, and torch.profiler's table (``--profile``, to stderr)."""
    census = op_seconds(step, opt, args.top_ops) if args.breakdown or args.top_ops else {}
    if args.profile:
        print_profile(step, opt, device, args.profile)
    return census


def print_profile(step, opt, device: str, n_ops: int) -> None:
    """One more step under ``torch.profiler``: its ``n_ops`` costliest ops by self time, grouped by input shapes,
    to stderr."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        step()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sort = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    print(prof.key_averages(group_by_input_shape=True).table(sort_by=sort, row_limit=n_ops, max_name_column_width=40,
                                                             max_shapes_column_width=80), file=sys.stderr)


def reference_batch(n_pairs: int, batch_size: int):
    """The tokenizer (62-character alphabet) and one collated batch of N{n_pairs}-K2V2 contexts, seed 0."""
    import kv_dataset_utils as kv

    tok = kv.create_tokenizer(62)
    ds, _ = kv.generate_kv_dataset(kv.KVTaskConfig(n_pairs=n_pairs), batch_size, 1, 1, seed=0)
    return tok, kv.KVCollator(tok)(list(ds["train"]))


def timed_steps(step, opt, warmup: int, repeats: int, device: str) -> dict:
    """Run ``warmup + repeats`` steps of ``step()`` (forward and backward) and ``opt.step()``; the median and
    least time of the timed ones, the process's peak memory (RSS on CPU), and per timed step the median CPU
    time spent in the kernel (``kernel_s``: on CPU mostly faulting in freshly mapped pages and unmapping freed
    ones) and of minor page faults."""
    import torch

    times, kernel_s, faults = [], [], []
    for i in range(warmup + repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        step()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        after = resource.getrusage(resource.RUSAGE_SELF)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            kernel_s.append(after.ru_stime - before.ru_stime)
            faults.append(float(after.ru_minflt - before.ru_minflt))
    if device == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"median_s": statistics.median(times), "min_s": min(times), "peak_mb": peak_mb,
            "kernel_s": statistics.median(kernel_s), "minor_faults": statistics.median(faults)}


def backward_in_parts(rows_loss, batch_size: int, parts: int) -> None:
    """Gradient accumulation within one step: ``rows_loss(rows).backward()`` for ``parts`` consecutive row
    slices, each loss weighted by its share of the rows. The gradient is the whole batch's when the loss is a
    mean over equally weighted samples (one answer length per batch, as in the key-value tasks); only one
    part's graph is alive at a time."""
    bounds = [batch_size * i // parts for i in range(parts + 1)]
    for start, stop in zip(bounds, bounds[1:]):
        (rows_loss(slice(start, stop)) * ((stop - start) / batch_size)).backward()


def op_seconds(step, opt, top_ops: int = 0) -> dict:
    """One more step with every aten op timed on its own: seconds in matrix products (``mm``, ``bmm``,
    ``addmm``...) and in everything else, the number of op calls (``ops``, views included) and the matrix
    products' GFLOP (2mnk each, by ``torch.utils.flop_counter``): a census of the work, to compare two
    implementations of one step. The sums leave out the time between ops (Python, autograd's bookkeeping,
    freeing memory), so together they are under a plain step's time. On CUDA every op is synchronised, which
    slows the step but times the kernels rather than their launches. ``top_ops`` > 0 also prints the census's
    costliest ops, by op and input shapes, to stderr (``print_top_ops``)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    totals = {"matmul_s": 0.0, "other_s": 0.0, "ops": 0}
    by_op = defaultdict(lambda: [0.0, 0])  # (op, input shapes) -> [seconds, calls]
    sync = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None

    class OpTimer(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            sync()
            t0 = time.perf_counter()
            out = func(*args, **(kwargs or {}))
            sync()
            seconds, name = time.perf_counter() - t0, func.overloadpacket.__name__
            totals["matmul_s" if name in MATMUL_OPS else "other_s"] += seconds
            totals["ops"] += 1
            if top_ops:
                entry = by_op[name, tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))]
                entry[0] += seconds
                entry[1] += 1
            return out

    # entered last, the flop counter sees each op first and hands it on to the timer, which times the kernel alone
    with OpTimer(), FlopCounterMode(display=False) as flops:
        step()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if top_ops:
        print_top_ops(by_op, top_ops)
    return {**totals, "matmul_gflop": flops.get_total_flops() / 1e9}


def print_top_ops(by_op: dict, n: int) -> None:
    """The ``n`` costliest entries of ``{(op, input shapes): [seconds, calls]}`` as a table, to stderr. Unlike
    torch.profiler's, these times are each op's own wall time: on the project's 2-core CPU the profiler showed
    the compiled SwiGLU kernels at 7-14x the time they take in an unprofiled step."""
    total = sum(seconds for seconds, _ in by_op.values())
    print(f"{'op':<28}{'ms':>10}{'share':>8}{'calls':>7}  input shapes", file=sys.stderr)
    for (name, shapes), (seconds, calls) in sorted(by_op.items(), key=lambda item: -item[1][0])[:n]:
        print(f"{name:<28}{seconds * 1e3:>10.1f}{seconds / total:>8.1%}{calls:>7}  {list(shapes)}", file=sys.stderr)
    print(f"all {len(by_op)} (op, shapes) pairs: {total * 1e3:.1f} ms", file=sys.stderr)


def measure(setting: dict, args, micro_batches: int = 1) -> dict:
    """Run one setting in a fresh subprocess, each step in ``micro_batches`` parts; its result dict, or
    ``{"error": ...}``."""
    passthrough = [*measure_flags(args), "--micro_batches", str(micro_batches)]
    res = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(setting), *passthrough],
                         capture_output=True, text=True, cwd=ROOT)
    return child_result(res, f"profile of {setting}", args)


def child_result(res: subprocess.CompletedProcess, title: str, args) -> dict:
    """A measuring child's result: the JSON on its last line of output, or ``{"error": its last stderr line}``.
    Where ``args`` asked for tables (``--profile``, ``--top_ops``), the child's stderr is printed under ``title``
    to stderr."""
    if (args.profile or args.top_ops) and not res.returncode:
        print(f"{title}:\n{res.stderr}", file=sys.stderr)
    if res.returncode:
        return {"error": (res.stderr.strip().splitlines() or ["killed"])[-1]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def measure_flags(args) -> list[str]:
    """The flags of ``add_measure_args`` that a measuring child needs, with ``args``' values."""
    return ["--batch_size", str(args.batch_size), "--n_pairs", str(args.n_pairs), "--repeats", str(args.repeats),
            "--warmup", str(args.warmup), "--profile", str(args.profile), "--top_ops", str(args.top_ops)] + (
                ["--breakdown"] if args.breakdown else [])


def add_measure_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch_size", type=int, default=64, help="samples per step")
    p.add_argument("--n_pairs", type=int, default=16, help="key-value pairs per context")
    p.add_argument("--repeats", type=int, default=5, help="timed steps; the median is reported")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after the timed steps, profile one more (torch.profiler) and print its N costliest ops by "
                        "self time, grouped by input shapes, to stderr (0: off)")
    p.add_argument("--breakdown", action="store_true",
                   help="after the timed steps, time one more op by op: seconds in matrix products and in the rest")
    p.add_argument("--top_ops", type=int, default=0, metavar="N",
                   help="time one more step op by op (as --breakdown) and print its N costliest ops, by op and input "
                        "shapes, to stderr: each op's own time, where torch.profiler (--profile) can inflate "
                        "element-wise ops on CPU (0: off)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setting", nargs="+", action="append", help="model and config fields for one setting (repeatable)")
    add_measure_args(p)
    p.add_argument("--micro_batches", type=int, default=1,
                   help="run each step in this many parts, accumulating their gradients (1: the whole batch at once)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_one(json.loads(args.child), args)))
        return
    settings = [parse_setting(s) for s in args.setting] if args.setting else [
        {"model": "gradmem", "grad_mode": m} for m in ("none", "first", "second")] + [
        {"model": "rmt", "K": 1, "mem_proj_mode": "proj"}, {"model": "full_context"}, {"model": "mamba"}]
    print(f"{'setting':<44}{'median s/step':>14}{'min s/step':>12}{'peak MB':>10}{'kernel s/step':>15}"
          f"{'minor faults/step':>19}{'state bytes/context':>21}")
    for setting in settings:
        r = measure(setting, args, args.micro_batches)
        label = " ".join(f"{k}={v}" for k, v in setting.items()) + (
            f" micro_batches={args.micro_batches}" if args.micro_batches > 1 else "")
        if "error" in r:
            print(f"{label:<44} failed: {r['error']}")
            continue
        print(f"{label:<44}{r['median_s']:>14.3f}{r['min_s']:>12.3f}{r['peak_mb']:>10.0f}{r['kernel_s']:>15.3f}"
              f"{r['minor_faults']:>19,.0f}{r['state_bytes']:>21,}", flush=True)


if __name__ == "__main__":
    main()
