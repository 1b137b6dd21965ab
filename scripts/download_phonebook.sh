#!/usr/bin/env bash
# Fetch the phonebook sets booydar/phonebook_N{2..64} with `datasets` and save each as data/phonebook_NX
# (columns context, query, target, answers; missing valid/test splits carved out of train). Needs
# network; folders that exist are skipped. SIZES, OUT, PY override.
# Offline instead: python phonebook_utils.py --n_entries 16 --out data/
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
OUT=${OUT:-data/}
SIZES=${SIZES:-"2 4 8 16 32 64"}
for n in $SIZES; do
  if [ -d "$OUT/phonebook_N$n" ]; then
    echo "$OUT/phonebook_N$n exists, skipping"
    continue
  fi
  "$PY" phonebook_utils.py --n_entries "$n" --source "booydar/phonebook_N$n" --out "$OUT"
done
