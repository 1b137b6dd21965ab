"""Train the full-context baseline (reads [context; query]) on SQuAD v1.1 (--layout c_qa, cq_a or qc_a; offline synthetic set without --data_path); --closed_book reads the query
alone: `accelerate launch run_gpt2_on_squad.py --help`."""
from full_context import FullContextLM
from training import run_experiment

if __name__ == "__main__":
    run_experiment(FullContextLM, description=__doc__, task="squad")
