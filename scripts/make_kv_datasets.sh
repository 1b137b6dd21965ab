#!/usr/bin/env bash
# Build the KV-retrieval datasets the experiments use: the family published on the hub (N4..N128 and the
# noise-ratio variants of N8 and N16, same folder names; fetch those exact ones with
# scripts/download_kv_retrieval.sh) plus our segment-noise variants. Override N_TRAIN, OUT or SEED from the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
N_TRAIN=${N_TRAIN:-1000000}
OUT=${OUT:-data/}
SEED=${SEED:-0}
common=(--key_len 2 --value_len 2 --vocab_size 62 --n_train "$N_TRAIN" --n_valid 5000 --n_test 5000 --seed "$SEED" --out "$OUT")
for n in 4 8 16 32 64 96 128; do
  "$PY" kv_dataset_utils.py --n_pairs "$n" "${common[@]}"
done
for n in 8 16; do
  # noise-ratio variants, as published: noise is a fraction r of each context's characters
  for r in 0.25 0.5 0.75; do
    "$PY" kv_dataset_utils.py --n_pairs "$n" --noise_ratio "$r" "${common[@]}"
  done
  # segment-noise variants: pairs scattered through random-character segments
  "$PY" kv_dataset_utils.py --n_pairs "$n" --n_segments 2 --min_segment_len 100 --max_segment_len 200 "${common[@]}"
done
