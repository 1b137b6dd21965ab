"""Train GradMem on SQuAD v1.1 (--layout c_qa, cq_a or qc_a; offline synthetic set without --data_path) with a pretrained LM (--pretrained_path or --pretrained):
`accelerate launch run_gradmemgpt_on_squad.py --help`."""
from grad_memgpt import GradMemGPT
from training import run_experiment

if __name__ == "__main__":
    run_experiment(GradMemGPT, description=__doc__, task="squad")
