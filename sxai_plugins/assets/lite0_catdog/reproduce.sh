#!/usr/bin/env bash
# Rebuilds head.safetensors and head.json (the card) beside this script from the Kaggle Dogs-vs-Cats
# subset in ../shared/data/dogs-vs-cats/train (1,001 cats, 1,001 dogs). Seeded: same files every run.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
data=${1:-$here/../../../../shared/data/dogs-vs-cats/train}
sxai train-head "$data" --backbone tf_efficientnet_lite0 --out "$here/head.safetensors" --seed 0
