#!/usr/bin/env bash
# GradMem on phonebook lookup with a pretrained LM, as in the reference experiments: gpt2, 32 memory tokens,
# K=2, inner SGD lr 0.4, second order, shared memory projection, write head, lr 1e-4, batch 64, bf16. Lists
# only what differs from the defaults. N: entries per phonebook; DATA: a folder under data/
# (scripts/download_phonebook.sh), or empty for offline-generated phonebooks of N entries.
#   MODEL=models/gpt2 N=16 NP=4 scripts/run_gradmemgpt_on_phonebook.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-gpt2}
N=${N:-8}
DATA=${DATA:-phonebook_N$N}
NP=${NP:-1}
data=(); [ -n "$DATA" ] && data=(--data_path "data/$DATA")
multi=(); [ "$NP" -gt 1 ] && multi=(--multi_gpu)
accelerate launch --config_file accelerate.yaml --num_processes "$NP" "${multi[@]}" run_gradmemgpt_on_phonebook.py \
  --pretrained_path "$MODEL" --n_entries "$N" "${data[@]}" --exp_path "runs/gradmem/phonebook_N$N" \
  --n_mem_tokens 32 --inner_lr 0.4 --mem_proj_mode proj --use_write_head --mixed_precision bf16 "$@"
