#!/usr/bin/env bash
# Build the KV-retrieval datasets the experiments use. Override N_TRAIN, OUT or SEED from the environment.
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
# noise variants: pairs scattered through random-character segments
for n in 8 16; do
  "$PY" kv_dataset_utils.py --n_pairs "$n" --n_segments 2 --min_segment_len 100 --max_segment_len 200 "${common[@]}"
done
