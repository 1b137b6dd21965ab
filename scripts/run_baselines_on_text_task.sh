#!/usr/bin/env bash
# The baselines of a natural-language task with the same pretrained LM: full context (reads context and
# query), closed book (query only: no context, no memory) and RMT (8 memory tokens). Lists only what differs
# from the defaults; task flags (--babi_task, --layout, --n_entries, --data_path) pass through.
#   MODEL=models/gpt2 TASK=babi scripts/run_baselines_on_text_task.sh --babi_task qa2 --data_path data/babilong_qa2_0k
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-gpt2}
TASK=${TASK:-babi}
NP=${NP:-1}
multi=(); [ "$NP" -gt 1 ] && multi=(--multi_gpu)
launch=(accelerate launch --config_file accelerate.yaml --num_processes "$NP" "${multi[@]}")
common=(--pretrained_path "$MODEL" --mixed_precision bf16 "$@")
"${launch[@]}" run_gpt2_on_$TASK.py --exp_path "runs/full_context/$TASK" --attn_implementation sdpa "${common[@]}"
"${launch[@]}" run_gpt2_on_$TASK.py --exp_path "runs/closed_book/$TASK" --closed_book --attn_implementation sdpa "${common[@]}"
"${launch[@]}" run_rmt_on_$TASK.py --exp_path "runs/rmt/$TASK" "${common[@]}"
