"""Train GradMem on phonebook lookup (offline phonebooks or booydar/phonebook_N* data) with a pretrained LM (--pretrained_path or --pretrained):
`accelerate launch run_gradmemgpt_on_phonebook.py --help`."""
from grad_memgpt import GradMemGPT
from training import run_experiment

if __name__ == "__main__":
    run_experiment(GradMemGPT, description=__doc__, task="phonebook")
