#!/usr/bin/env bash
# Score a trained run on later rows of the same log, as a user would: DLRM `full` trained on the first 8,000 lines
# of the real Criteo Kaggle sample (lines 1-7000 train, 7001-8000 validation; 3 epochs, batch 256), once with
# --min-count 1 (no training value reaches the out-of-vocabulary row) and once with --min-count 2 (values seen once
# train it), seeds 0-2, each scored with its best and its last checkpoint on the last 2,000 lines given as a
# separate raw file.
# Writes the table to benchmarks/results/evaluate_criteo_sample.md (RESULT).
#
#   bash benchmarks/evaluate_criteo_sample.sh
set -euo pipefail
SAMPLE=${SAMPLE:-../shared/data/criteo_kaggle_head10k.tsv}
WORK=${WORK:-${TMPDIR:-/tmp}/embtables-evaluate-sample}
RESULT=${RESULT:-benchmarks/results/evaluate_criteo_sample.md}
EMBTABLES=${EMBTABLES:-.venv/bin/embtables}
PYTHON=${PYTHON:-.venv/bin/python}
if [ ! -f "$SAMPLE" ]; then
    echo "skipping: the Criteo sample $SAMPLE is absent (it exists on development machines only)" >&2
    exit 0
fi
mkdir -p "$WORK"
# written once: preprocessing resumes only on the very same input file (its size and mtime)
[ -f "$WORK/head8000.tsv" ] || head -n 8000 "$SAMPLE" > "$WORK/head8000.tsv"
[ -f "$WORK/tail.tsv" ] || tail -n +8001 "$SAMPLE" > "$WORK/tail.tsv"
"$EMBTABLES" preprocess criteo "$WORK/head8000.tsv" --out "$WORK/data" --split ordered --fractions 0.875,0.125,0
for mc in 1 2; do
    for seed in 0 1 2; do
        run="$WORK/run-mc$mc-s$seed"
        "$EMBTABLES" train --data "$WORK/data" --method full --epochs 3 --batch-size 256 --min-count "$mc" \
            --seed "$seed" --out "$run" --force > "$run.summary.json"
        for which in best last; do
            "$EMBTABLES" evaluate "$run" --data "$WORK/tail.tsv" --checkpoint "$which" \
                --out "$run/evaluate-$which.json" > /dev/null 2> "$run/evaluate-$which.log"
        done
    done
done
"$PYTHON" - "$WORK" "$RESULT" <<'EOF'
import json, sys
from pathlib import Path
from embtables.app.runinfo import machine

work, result = Path(sys.argv[1]), Path(sys.argv[2])
rows, means, tail = [], [], {}
for mc in (1, 2):
    for which in ("best", "last"):
        got = []
        for seed in (0, 1, 2):
            run = work / f"run-mc{mc}-s{seed}"
            val = {e["step"]: e["val"]["auc"] for e in json.loads((run / "metrics.json").read_text())["evals"]}
            r = json.loads((run / f"evaluate-{which}.json").read_text())
            c = r["calibration"]
            got.append((val[r["step"]], r["auc"], r["logloss"], c["ratio"]))
            tail[mc, which, seed] = r["auc"]
            rows.append(f"| {mc} | {which} | {seed} | {r['step']} | {val[r['step']]:.4f} | {r['auc']:.4f} | "
                        f"{r['logloss']:.4f} | {c['mean_predicted']:.4f} / {c['observed']:.4f} = {c['ratio']:.2f} | "
                        f"{r['oov_values']:,} | {'yes' if r['warnings'] else 'no'} |")
        m = [sum(g[i] for g in got) / len(got) for i in range(4)]
        lo, hi = min(g[1] for g in got), max(g[1] for g in got)
        means.append(f"| {mc} | {which} | {m[0]:.4f} | {m[1]:.4f} ({lo:.4f}..{hi:.4f}) | {m[2]:.4f} | {m[3]:.2f} |")
r = json.loads((work / "run-mc2-s0" / "evaluate-best.json").read_text())
paired = {w: ", ".join(f"{tail[2, w, s] - tail[1, w, s]:+.4f}" for s in (0, 1, 2)) for w in ("best", "last")}
gap = {mc: ", ".join(f"{tail[mc, 'best', s] - tail[mc, 'last', s]:+.4f}" for s in (0, 1, 2)) for mc in (1, 2)}
rare = sum(o["rare"] for o in r["oov"].values())
text = f"""# Scoring a trained run on later rows (Criteo Kaggle sample)

DLRM `full` (default model, dim 16) trained on the first 8,000 lines of `criteo_kaggle_head10k.tsv` (lines 1-7000
train, 7001-8000 validation, 3 epochs of 27 steps, batch 256, validation at each epoch end), then scored with
`embtables evaluate` on the last {r['rows']:,} lines given as a separate raw file ({r['bad_lines']} bad lines).
Machine: {machine()}.

Mean over seeds 0, 1, 2 (tail AUC: min..max):

| --min-count | checkpoint | val AUC | tail AUC | tail log loss | calibration ratio (predicted / observed CTR) |
|---|---|---|---|---|---|
{chr(10).join(means)}

Each run:

| --min-count | checkpoint | seed | step | val AUC | tail AUC | tail log loss | calibration: predicted / observed CTR | values on the OOV row | untrained-OOV warning |
|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Of the tail's {r['rows'] * len(r['oov']):,} categorical values, {r['oov_values']:,} map to an out-of-vocabulary row
({r['oov_values'] - rare:,} never seen in training, {rare:,} seen once there and cut by --min-count 2). With
--min-count 1 the same unseen values read each feature's OOV row at its random initial value; with --min-count 2
that row trained on the values seen once.

Best minus last checkpoint, tail AUC, seeds 0, 1, 2: {gap[1]} (--min-count 1); {gap[2]} (--min-count 2): the run
overfits after epoch 1, and the last checkpoint alone would have cost that much on later rows.
--min-count 2 minus --min-count 1, tail AUC paired by seed: {paired['best']} (best checkpoints); {paired['last']}
(last). Read these against the seed spread above: 2,000 rows with {round(r['calibration']['observed'] * r['rows'])}
clicks are few, so the sign across seeds says more than the size.

Commands (`bash benchmarks/evaluate_criteo_sample.sh`):

    head -n 8000 criteo_kaggle_head10k.tsv > head8000.tsv; tail -n +8001 criteo_kaggle_head10k.tsv > tail.tsv
    embtables preprocess criteo head8000.tsv --out data --split ordered --fractions 0.875,0.125,0
    embtables train --data data --method full --epochs 3 --batch-size 256 --min-count MC --seed S --out run
    embtables evaluate run --data tail.tsv --checkpoint best    (and --checkpoint last)
"""
result.write_text(text)
print(text)
EOF
