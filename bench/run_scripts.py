"""Steps/s of each run script at the reference config (llama L4 H4 D128, 8 memory tokens, N16-K2V2-V62,
batch 64), read from the runs' own metrics.jsonl: the full training loop, data loading included.

    python bench/run_scripts.py --steps 12
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASK = ["--task_n_pairs", "16", "--task_key_len", "2", "--task_value_len", "2", "--task_vocab_size", "62",
        "--task_n_train", "5000", "--task_n_valid", "64"]
SCRIPTS = {
    "run_gradmemgpt_on_kv_retrieval.py (second order, K=2)": ["run_gradmemgpt_on_kv_retrieval.py"],
    "run_gradmemgpt_on_kv_retrieval.py (first order, K=2)": ["run_gradmemgpt_on_kv_retrieval.py", "--grad_mode", "first"],
    "run_rmt_on_kv_retrieval.py (K=1, proj)": ["run_rmt_on_kv_retrieval.py", "--mem_proj_mode", "proj"],
    "run_gpt2_on_kv_retrieval.py (llama, full context)": ["run_gpt2_on_kv_retrieval.py"],
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=12, help="optimizer steps per script (the first window is dropped)")
    p.add_argument("--log_steps", type=int, default=3, help="steps per logged window")
    args = p.parse_args()
    print(f"{'script':<56}{'steps/s':>10}")
    for label, (script, *extra) in SCRIPTS.items():
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, str(ROOT / script), *TASK, *extra, "--exp_path", tmp, "--max_steps", str(args.steps),
                   "--log_steps", str(args.log_steps), "--eval_steps", str(10 * args.steps), "--warmup_steps", "1",
                   "--no-show_progress"]
            res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if res.returncode:
                print(f"{label:<56} failed: {res.stderr.strip().splitlines()[-1]}")
                continue
            rows = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
            rates = [r["steps_per_s"] for r in rows if r["split"] == "train" and "steps_per_s" in r][1:]
            print(f"{label:<56}{statistics.median(rates):>10.3f}", flush=True)


if __name__ == "__main__":
    main()
