#!/usr/bin/env bash
# Full-context baseline (reads the whole context with the query): llama L4 H4 D128 by default;
# BASE_MODEL=gpt2|pythia|mamba for the others. Lists only what differs from the defaults.
#   DATA=N16-K2V2-V62_1M BASE_MODEL=mamba scripts/run_gpt_on_kv_retrieval.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-N16-K2V2-V62_1M}
NP=${NP:-1}
BASE_MODEL=${BASE_MODEL:-llama}
multi=(); [ "$NP" -gt 1 ] && multi=(--multi_gpu)
accelerate launch --config_file accelerate.yaml --num_processes "$NP" "${multi[@]}" run_gpt2_on_kv_retrieval.py \
  --data_path "data/$DATA" --exp_path "runs/$BASE_MODEL/$DATA" --base_model "$BASE_MODEL" \
  --attn_implementation sdpa --warmup_steps 10000 --max_steps 1000000 --eval_steps 5000 \
  --early_stopping_patience 20 --mixed_precision bf16 "$@"
