"""Train GradMem on bAbI (qa1-qa5; offline stories or BABILong 0k data) with a pretrained LM (--pretrained_path or --pretrained):
`accelerate launch run_gradmemgpt_on_babi.py --help`."""
from grad_memgpt import GradMemGPT
from training import run_experiment

if __name__ == "__main__":
    run_experiment(GradMemGPT, description=__doc__, task="babi")
