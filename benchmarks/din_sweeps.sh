#!/usr/bin/env bash
# The DIN memory-budget sweeps, one after another: the planted synthetic sequences, then the real Amazon Video Games
# sample. They time training, so never run two at once, and run nothing else heavy meanwhile (the reports flag
# speeds measured under other load). Each sweep resumes where it stopped when the script is run again, and skips
# what is finished. Every cell is din_compare.py's recipe (2 epochs, batch 256, embedding lr 0.01); the sweep adds
# the full table per seed as the reference, and its report the popularity ranking (no embeddings) as a floor.
# About an hour on 2 CPU cores: a cell takes ~35 s on the synthetic data, ~70 s on Amazon (longer histories).
#
#   bash benchmarks/din_sweeps.sh
#   SYN_USERS=500 AMAZON_TSV=head.tsv EXTRA="--max-steps 3" OUT=/tmp/din bash benchmarks/din_sweeps.sh   # a check
set -euo pipefail
EMBTABLES=${EMBTABLES:-.venv/bin/embtables}
BACKEND=${BACKEND:-fused}   # the fastest CPU store here; it serves DIN's unpooled item table too
OUT=${OUT:-benchmarks/results}
SEEDS=${SEEDS:-0,1}
EXTRA=${EXTRA:-}            # more sweep arguments, e.g. "--max-steps 3" to check the commands (with another OUT)
SYN_USERS=${SYN_USERS:-20000}
SYNTH=${SYNTH:-${TMPDIR:-/tmp}/embtables-synth-sequences-$SYN_USERS}
AMAZON_TSV=${AMAZON_TSV:-../shared/data/amazon_video_games_interactions.tsv}
AMAZON=${AMAZON:-${TMPDIR:-/tmp}/embtables-amazon-video-games-$(basename "$AMAZON_TSV" .tsv)}
# optembed is left out: it trains in stages for DLRM only (DIN's two collections would need one search each)
METHODS=full,hash,multihash,qr,mixed_dim,unified
# shellcheck disable=SC2206  # EXTRA is meant to split into words
RECIPE=(--model din --backend "$BACKEND" --epochs 2 --batch-size 256 --embedding-lr 0.01 --budgets 0.1,0.01
        --seeds "$SEEDS" --methods "$METHODS" $EXTRA)

# 1. planted synthetic sequences (Bayes AUC known): 20,000 users, 5,000 items, histories up to 20
if [ ! -f "$SYNTH/summary.json" ]; then
    "$EMBTABLES" synth sequences --users "$SYN_USERS" --out "$SYNTH" --force
fi
"$EMBTABLES" sweep --data "$SYNTH" "${RECIPE[@]}" --out "$OUT/sweep_din_synthetic"

# 2. the real Amazon Video Games sample (skips with a message where ../shared/data is absent)
if [ ! -f "$AMAZON_TSV" ]; then
    echo "skipping: the Amazon sample $AMAZON_TSV is absent (it exists on development machines only)" >&2
    exit 0
fi
if [ ! -f "$AMAZON/summary.json" ]; then
    "$EMBTABLES" prepare-sequences amazon "$AMAZON_TSV" --out "$AMAZON" --force
fi
"$EMBTABLES" sweep --data "$AMAZON" "${RECIPE[@]}" --out "$OUT/sweep_din_amazon"
