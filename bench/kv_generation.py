"""Benchmark KV-retrieval data generation: samples/s for N16 and N96, with and without save_to_disk.

    python bench/kv_generation.py                 # 200K samples per run, median of 3 runs
    python bench/kv_generation.py --n 1000000 --repeats 1   # the 1M-sample figure
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import datasets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kv_dataset_utils import KVTaskConfig, generate_kv_dataset, save_dataset_atomically  # noqa: E402


def measure(cfg: KVTaskConfig, n: int):
    """(seconds to generate, seconds to generate and save, bytes on disk) for one run."""
    t0 = time.perf_counter()
    ds, card = generate_kv_dataset(cfg, n, 1000, 1000, seed=0)
    t_gen = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = save_dataset_atomically(ds, card, Path(tmp) / "ds")
        t_all = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return t_gen, t_all, size


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200_000, help="training samples per run")
    p.add_argument("--repeats", type=int, default=3, help="runs per setting; the median is printed")
    p.add_argument("--pairs", type=int, nargs="+", default=[16, 96], help="n_pairs settings to measure")
    args = p.parse_args()
    datasets.disable_progress_bars()
    print(f"{'task':<16}{'samples':>10}{'gen samples/s':>16}{'gen+save samples/s':>20}{'gen+save s':>12}{'disk MB':>10}")
    for n_pairs in args.pairs:
        cfg = KVTaskConfig(n_pairs=n_pairs)
        runs = [measure(cfg, args.n) for _ in range(args.repeats)]
        t_gen = statistics.median(r[0] for r in runs)
        t_all = statistics.median(r[1] for r in runs)
        total = args.n + 2000
        print(f"{cfg.name:<16}{total:>10}{total / t_gen:>16,.0f}{total / t_all:>20,.0f}{t_all:>12.1f}{runs[0][2] / 1e6:>10.0f}")


if __name__ == "__main__":
    main()
