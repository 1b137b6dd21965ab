"""Train the Recurrent Memory Transformer baseline on bAbI (qa1-qa5; offline stories or BABILong 0k data):
`accelerate launch run_rmt_on_babi.py --help`."""
from rmt import RMT
from training import run_experiment

if __name__ == "__main__":
    run_experiment(RMT, description=__doc__, task="babi")
