#!/usr/bin/env bash
# GradMem reference experiment: llama L4 H4 D128, 8 memory tokens, K=2, inner lr 0.04, second order,
# write head, inner-loss weight 0.5 on the last inner step's own loss L_write(M_{K-1}) (the official
# implementation's term, free: that step computed it), lr 1e-4, batch 64, 10k warmup, the backbone's SwiGLU and
# RMSNorm kernels compiled (the first step compiles them, ~30 s). Lists only what
# differs from the defaults. DATA names a folder under data/ (scripts/make_kv_datasets.sh builds them); NP processes.
#   DATA=N32-K2V2-V62_1M NP=4 scripts/run_gradmemgpt_on_kv_retrieval.sh --max_steps 300000
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-N16-K2V2-V62_1M}
NP=${NP:-1}
multi=(); [ "$NP" -gt 1 ] && multi=(--multi_gpu)
accelerate launch --config_file accelerate.yaml --num_processes "$NP" "${multi[@]}" run_gradmemgpt_on_kv_retrieval.py \
  --data_path "data/$DATA" --exp_path "runs/gradmem/$DATA" \
  --use_write_head --inner_loss_weight 0.5 --inner_loss_memory last_step --compile_double_bwd_layers --warmup_steps 10000 \
  --max_steps 1000000 --eval_steps 5000 --early_stopping_patience 20 --mixed_precision bf16 "$@"
