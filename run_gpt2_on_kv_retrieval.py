"""Train the full-context baseline (reads [context; query]) on KV retrieval; --base_model picks
llama, gpt2, pythia or mamba: `accelerate launch run_gpt2_on_kv_retrieval.py --help`."""
from full_context import FullContextLM
from training import run_experiment

if __name__ == "__main__":
    run_experiment(FullContextLM, description=__doc__)
