#!/usr/bin/env bash
# RMT baseline at the GradMem reference size (llama L4 H4 D128, 8 memory tokens): K=1 forward write,
# `proj` memory projection. Lists only what differs from the defaults.
#   DATA=N16-K2V2-V62_1M NP=4 scripts/run_rmt_on_kv_retrieval.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-N16-K2V2-V62_1M}
NP=${NP:-1}
multi=(); [ "$NP" -gt 1 ] && multi=(--multi_gpu)
accelerate launch --config_file accelerate.yaml --num_processes "$NP" "${multi[@]}" run_rmt_on_kv_retrieval.py \
  --data_path "data/$DATA" --exp_path "runs/rmt/$DATA" \
  --mem_proj_mode proj --warmup_steps 10000 --max_steps 1000000 --eval_steps 5000 \
  --early_stopping_patience 20 --mixed_precision bf16 "$@"
