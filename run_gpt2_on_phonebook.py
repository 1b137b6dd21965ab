"""Train the full-context baseline (reads [context; query]) on phonebook lookup (offline phonebooks or booydar/phonebook_N* data); --closed_book reads the query
alone: `accelerate launch run_gpt2_on_phonebook.py --help`."""
from full_context import FullContextLM
from training import run_experiment

if __name__ == "__main__":
    run_experiment(FullContextLM, description=__doc__, task="phonebook")
