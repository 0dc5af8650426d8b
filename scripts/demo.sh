#!/usr/bin/env bash
# The main demo (`make demo`): explain the bundled example photos with the default model and its
# bundled semantic spaces, then write the HTML report. Offline; about a minute on two CPU cores.
# Usage: bash scripts/demo.sh [VENV]   (VENV defaults to .venv; without one, `sxai` on PATH is used)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}
if [[ -x "$venv/bin/sxai" ]]; then
    sxai="$venv/bin/sxai"
elif command -v sxai >/dev/null; then
    sxai=sxai
else
    echo "demo: no sxai in $venv/bin or on PATH; run \`make setup\` first" >&2
    exit 1
fi
out=sxai-out

echo "== sxai explain: prediction, probabilities, semantic probabilities P_s and the sentence =="
"$sxai" explain sxai_plugins/assets/examples --out "$out"
echo
echo "== sxai report: the spaces, their evaluation and the examples in one HTML page =="
"$sxai" report --out "$out/report.html"
echo
echo "Radar maps and the report are in $out/; open $out/report.html in a browser."
