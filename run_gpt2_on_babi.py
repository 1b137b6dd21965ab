"""Train the full-context baseline (reads [context; query]) on bAbI (qa1-qa5; offline stories or BABILong 0k data); --closed_book reads the query
alone: `accelerate launch run_gpt2_on_babi.py --help`."""
from full_context import FullContextLM
from training import run_experiment

if __name__ == "__main__":
    run_experiment(FullContextLM, description=__doc__, task="babi")
