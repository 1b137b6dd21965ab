#!/usr/bin/env bash
# GradMem on SQuAD v1.1 with a pretrained LM, as in the reference experiments: gpt2, 8 memory tokens, K=2,
# inner SGD, second order, shared memory projection, write head, lr 1e-4, batch 64, bf16; inner lr 0.25 for
# c_qa, and 0.03 with only the last 2 inner steps second order for cq_a (qc_a takes cq_a's settings). Lists
# only what differs from the defaults. DATA: a folder under data/ (scripts/download_squad.sh), or empty for
# the offline synthetic set.
#   MODEL=models/gpt2 LAYOUT=cq_a NP=4 scripts/run_gradmemgpt_on_squad.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-gpt2}
LAYOUT=${LAYOUT:-c_qa}
DATA=${DATA:-squad}
NP=${NP:-1}
case "$LAYOUT" in
  c_qa) layout=(--inner_lr 0.25) ;;
  cq_a|qc_a) layout=(--inner_lr 0.03 --last_K_second_order 2) ;;
  *) echo "LAYOUT must be c_qa, cq_a or qc_a" >&2; exit 2 ;;
esac
data=(); [ -n "$DATA" ] && data=(--data_path "data/$DATA")
multi=(); [ "$NP" -gt 1 ] && multi=(--multi_gpu)
accelerate launch --config_file accelerate.yaml --num_processes "$NP" "${multi[@]}" run_gradmemgpt_on_squad.py \
  --pretrained_path "$MODEL" --layout "$LAYOUT" "${data[@]}" --exp_path "runs/gradmem/squad_$LAYOUT" \
  --mem_proj_mode proj --use_write_head --mixed_precision bf16 "${layout[@]}" "$@"
