#!/usr/bin/env bash
# Every committed memory-budget sweep, one after another: they time training, so never run two at once, and run
# nothing else heavy meanwhile (the reports flag speeds measured under other load). Each step resumes where it
# stopped when the script is run again, and skips what is finished. About 2 hours on 2 CPU cores.
#
#   bash benchmarks/sweeps.sh
set -euo pipefail
EMBTABLES=${EMBTABLES:-.venv/bin/embtables}
PYTHON=${PYTHON:-.venv/bin/python}
BACKEND=${BACKEND:-fused}   # the fastest CPU store here; its dim multiple is 1, so mixed_dim's power rule reaches d=1
SCALED=${SCALED:-${TMPDIR:-/tmp}/embtables-synth-criteo-scale0.05}

# 1. unified: 1, 2, 4 probes per feature and more probes for larger vocabularies (sets unified's default)
"$PYTHON" benchmarks/unified_ablation.py --backend "$BACKEND"

# 2. the small planted data: 34k table rows in all (Criteo Kaggle's cardinalities x 0.001, at least 50)
"$EMBTABLES" sweep --model dlrm --data synthetic --backend "$BACKEND" --budgets 0.1,0.01,0.001 --seeds 0,1 \
    --methods full,hash,multihash,qr,mixed_dim,unified --out benchmarks/results/sweep_synthetic
# OptEmbed learns its plan; its penalty alpha sets how many rows it keeps, so which budgets it reaches: two recipes
for ALPHA in 0.03 0.3; do
    "$EMBTABLES" sweep --model dlrm --data synthetic --backend "$BACKEND" --budgets 0.1,0.01,0.001 --seeds 0,1 \
        --methods optembed --option optembed:alpha=$ALPHA --option optembed:threshold_lr=0.1 \
        --out benchmarks/results/sweep_synthetic
done
"$PYTHON" benchmarks/optembed_alpha.py --data synthetic --alphas 0,0.01,0.03,0.1,0.3 --out benchmarks/results/optembed_alpha.md

# 3. Criteo-scale planted data: cardinalities x 0.05 (1.7M table rows, the largest 507k), same 3M samples
if [ ! -f "$SCALED/summary.json" ]; then
    "$EMBTABLES" synth criteo --rows 3000000 --vocab-scale 0.05 --out "$SCALED" --force
fi
"$EMBTABLES" sweep --model dlrm --data "$SCALED" --backend "$BACKEND" --budgets 0.1,0.01,0.001,0.0001 --seeds 0 \
    --out benchmarks/results/sweep_synthetic_scale0.05

# 4. the real Criteo Kaggle sample (skips with a message where ../shared/data is absent)
BACKEND="$BACKEND" bash benchmarks/criteo_sample_sweep.sh
