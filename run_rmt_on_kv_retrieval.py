"""Train the Recurrent Memory Transformer baseline on KV retrieval: `accelerate launch run_rmt_on_kv_retrieval.py --help`."""
from rmt import RMT
from training import run_experiment

if __name__ == "__main__":
    run_experiment(RMT, description=__doc__)
