#!/usr/bin/env bash
# Capacity sweep: GradMem (second order, K=2 and K=3), RMT and the full-context transformer over pair
# counts and 3 seeds, plus GradMem at K_test = 1..2*K_train. Writes results/capacity.csv and the plots.
# CPU scale by default (2 single-threaded runs at a time). Resumable: run it again to continue.
#   scripts/capacity_sweep.sh                      # CPU scale
#   PAIRS="1 2 4" SEEDS="0" scripts/capacity_sweep.sh
#   SCALE=paper scripts/capacity_sweep.sh          # 8 memory tokens, L4 D128, N up to 96, on a GPU
#   SCALE=cpu2 scripts/capacity_sweep.sh           # round 2 on CPU: '!kv!' pairs, 1 memory vector, early stopping
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
args=()
if [ "${SCALE:-cpu}" = paper ]; then
  args+=(--n_mem_tokens 8 --n_layer 4 --n_embd 128 --key_len 2 --value_len 2 --vocab_size 62
         --pairs 8 16 32 64 96 --models gradmem_k1 gradmem_k5 rmt full_context --n_train 1000000
         --inner_optimizer sgd --inner_lr 1.0
         --learning_rate 1e-4 --max_steps 200000 --max_train_minutes 1440 --eval_steps 5000 --parallel 1)
fi
if [ "${SCALE:-cpu}" = cpu2 ]; then
  # round 2: '!kv!' pairs, one memory vector, each model trained until it stops improving. Full context
  # starts its chains at 8 pairs, where it learns induction, and needs the patience to outlast that plateau;
  # a seed still on the plateau there trains 8 pairs once more from its 4-pair weights.
  args+=(--out_dir results/capacity_round2 --runs_dir runs/sweep2 --vocab_size 62 --no-key_value_separator
         --n_mem_tokens 1 --pairs 1 2 4 8 --batch_size 64 --eval_steps 250 --max_steps 20000
         --patience 6 --max_train_minutes 8
         --models full_context rmt gradmem_sgd_k1 gradmem_k2 gradmem_k3 gradmem_k5
         --model_overrides full_context.curriculum_anchor=8 full_context.patience=40
                           full_context.max_train_minutes=30 full_context.retry_anchor=true)
fi
if [ -n "${PAIRS:-}" ]; then args+=(--pairs $PAIRS); fi
if [ -n "${SEEDS:-}" ]; then args+=(--seeds $SEEDS); fi
if [ -n "${MODELS:-}" ]; then args+=(--models $MODELS); fi
exec "$PY" capacity_sweep.py "${args[@]}" "$@"
