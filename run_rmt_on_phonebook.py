"""Train the Recurrent Memory Transformer baseline on phonebook lookup (offline phonebooks or booydar/phonebook_N* data):
`accelerate launch run_rmt_on_phonebook.py --help`."""
from rmt import RMT
from training import run_experiment

if __name__ == "__main__":
    run_experiment(RMT, description=__doc__, task="phonebook")
