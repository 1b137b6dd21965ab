#!/usr/bin/env bash
# GradMem on bAbI with a pretrained LM, as in the reference experiments: gpt2, 8 memory tokens, K=2, inner SGD
# lr 0.04, second order, shared memory projection, write head, lr 1e-4, batch 64, bf16. Lists only what
# differs from the defaults. MODEL: a local folder or .gguf file (or a hub name with network); TASK: qa1-qa5;
# DATA: a folder under data/ (scripts/download_babi.sh), or empty for offline-generated stories.
#   MODEL=models/gpt2 TASK=qa2 NP=4 scripts/run_gradmemgpt_on_babi.sh --max_steps 20000
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-gpt2}
TASK=${TASK:-qa1}
DATA=${DATA:-babilong_${TASK}_0k}
NP=${NP:-1}
data=(); [ -n "$DATA" ] && data=(--data_path "data/$DATA")
multi=(); [ "$NP" -gt 1 ] && multi=(--multi_gpu)
accelerate launch --config_file accelerate.yaml --num_processes "$NP" "${multi[@]}" run_gradmemgpt_on_babi.py \
  --pretrained_path "$MODEL" --babi_task "$TASK" "${data[@]}" --exp_path "runs/gradmem/babi_$TASK" \
  --mem_proj_mode proj --use_write_head --mixed_precision bf16 "$@"
