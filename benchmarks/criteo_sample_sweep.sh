#!/usr/bin/env bash
# The committed sweep of DLRM on the real Criteo Kaggle sample (first 10,000 lines of train.txt), split in
# file order: lines 1-8000 train, 8001-9000 validation, 9001-10000 test. 10,000 rows is small: read its AUC
# differences against the seed spread in the report.
#
#   bash benchmarks/criteo_sample_sweep.sh [OUT]     (default OUT: benchmarks/results/sweep_criteo_sample)
set -euo pipefail
SAMPLE=${SAMPLE:-../shared/data/criteo_kaggle_head10k.tsv}
DATA=${DATA:-${TMPDIR:-/tmp}/embtables-criteo-head10k}
OUT=${1:-benchmarks/results/sweep_criteo_sample}
EMBTABLES=${EMBTABLES:-.venv/bin/embtables}
BACKEND=${BACKEND:-fused}
if [ ! -f "$SAMPLE" ]; then
    echo "skipping: the Criteo sample $SAMPLE is absent (it exists on development machines only)" >&2
    exit 0
fi
"$EMBTABLES" preprocess criteo "$SAMPLE" --out "$DATA" --split ordered --fractions 0.8,0.1,0.1
"$EMBTABLES" sweep --model dlrm --data "$DATA" --backend "$BACKEND" --budgets 0.1,0.04,0.01,0.001,0.0001 --seeds 0,1 \
    --epochs 3 --batch-size 256 --out "$OUT"
