"""Train GradMem on associative KV retrieval: `accelerate launch run_gradmemgpt_on_kv_retrieval.py --help`."""
from grad_memgpt import GradMemGPT
from training import run_experiment

if __name__ == "__main__":
    run_experiment(GradMemGPT, description=__doc__)
