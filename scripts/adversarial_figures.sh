#!/usr/bin/env bash
# Regenerates docs/results/adversarial/ (the README's "Adversarial examples" table and ROC plot,
# issue 12) and the detector bundled with the default model's spaces:
#   1. calibrate the detector (gap score, false-positive budget 0.05 held with confidence 0.9) on
#      the default head's held-out images that step 2 does not attack plus the shared data's
#      unlabelled pool ($EXTRA: 905 clean images the head never saw), and store it as
#      $SPACES/detector.json (what `sxai explain` then uses);
#   2. attack N = 200 other held-out images with PGD, the adaptive and the score-aware attackers, 10 steps, at
#      ε = 0.05, 0.01, 0.005, and report per attack and ε (JSON, Markdown table, ROC plot).
# Attacked outputs are cached in $CACHE: a rerun, or one with other spaces (say, the v2 ones),
# reuses the plain attacks (the adaptive ones depend on the spaces and detector: redone). On 2 busy CPU
# cores the full run takes about an hour without a cache. Usage, from anywhere:
#   scripts/adversarial_figures.sh            # SPACES=..., OUT=..., CACHE=..., N=... to change
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
SPACES=${SPACES:-sxai_plugins/assets/lite0_catdog/spaces}
OUT=${OUT:-docs/results/adversarial}
CACHE=${CACHE:-.cache/adversarial}
N=${N:-200}
EXTRA=${EXTRA:-../shared/data/dogs-vs-cats/unlabeled}
mkdir -p "$OUT"
sxai() { "$PYTHON" -m sxai_plugins "$@"; }

sxai calibrate-detector $EXTRA --heldout-rest "$N" --calibration-n 0 --spaces "$SPACES" --fpr 0.05 --confidence 0.9 \
    --batch-size 20 --json > "$OUT/detector.json"
# --batch-size 20 is part of the cache keys: keep it to reuse cached attacks
common=(--n "$N" --seed 0 --steps 10 --eps 0.05,0.01,0.005 --adaptive --score-aware --spaces "$SPACES"
        --batch-size 20 --cache "$CACHE" -q)
sxai adversarial "${common[@]}" --roc "$OUT/roc.png" --json > "$OUT/report.json"
sxai adversarial "${common[@]}" > "$OUT/table.md"  # from the cache: nothing is attacked again
cat "$OUT/table.md"
