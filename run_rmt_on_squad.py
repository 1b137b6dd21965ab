"""Train the Recurrent Memory Transformer baseline on SQuAD v1.1 (--layout c_qa, cq_a or qc_a; offline synthetic set without --data_path):
`accelerate launch run_rmt_on_squad.py --help`."""
from rmt import RMT
from training import run_experiment

if __name__ == "__main__":
    run_experiment(RMT, description=__doc__, task="squad")
