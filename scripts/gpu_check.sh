#!/usr/bin/env bash
# Issue 3's GPU checks in one run: the CUDA-only tests of the search, the genetic-search
# benchmark with vgg19 (random weights) on BENCH_IMAGES images, then `sxai traits` for dogs at
# Ns=N with the paper-mode search and the spread of PC1 at Ns=STABILITY, all on the GPU.
#
#   bash scripts/gpu_check.sh DATA_ROOT OUT
#
# DATA_ROOT is an ImageFolder root holding dog/ (e.g. ../shared/data/dogs-vs-cats/train);
# OUT receives env.txt, gpu_tests.txt, bench_<backbone>.{json,txt}, traits.log and
# traits_dog.tar.gz.
# Settings come from the environment: PY (python3), DEVICE (cuda), N (300), STABILITY
# (50,100,300), BENCH_IMAGES (300), BATCH (500 genomes per pass), BENCH_LIMIT_S / TRAITS_LIMIT_S
# (200 / 330 seconds each step may take), INVERT (tv), BACKBONE_BENCH (vgg19; a space-separated
# list, e.g. "vgg19 lite0_catdog"), TRAITS (1; 0 skips the traits step), and BENCH_EXTRA /
# TRAITS_EXTRA: more arguments for each step (a dry run on a CPU: see the end of this file).
set -u
data=${1:?usage: gpu_check.sh DATA_ROOT OUT}
out=${2:?usage: gpu_check.sh DATA_ROOT OUT}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
N=${N:-300}
STABILITY=${STABILITY:-50,100,300}
BENCH_IMAGES=${BENCH_IMAGES:-300}
BATCH=${BATCH:-500}
INVERT=${INVERT:-tv}
BACKBONE_BENCH=${BACKBONE_BENCH:-vgg19}
export PYTHONUNBUFFERED=1
mkdir -p "$out"

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$PY" - <<'EOF'
import platform, torch, timm, skimage, numpy
print("python", platform.python_version(), "torch", torch.__version__, "timm", timm.__version__,
      "scikit-image", skimage.__version__, "numpy", numpy.__version__)
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
EOF
} 2>&1 | tee "$out/env.txt"

"$PY" -m pytest -q -p no:cacheprovider tests/test_genetic.py tests/test_superpixels.py \
  >"$out/gpu_tests.txt" 2>&1
echo "GPU tests: exit $?; $(tail -1 "$out/gpu_tests.txt")" | tee -a "$out/env.txt"

for backbone in $BACKBONE_BENCH; do
  started=$(date +%s)
  weights=--no-pretrained  # random weights are fine for timing; the default's ship with sxai
  [ "$backbone" = lite0_catdog ] && weights=
  timeout "${BENCH_LIMIT_S:-200}" "$PY" benchmarks/bench_genetic.py --backbone "$backbone" $weights \
    --images "$BENCH_IMAGES" --data "$data/dog" --device "$DEVICE" \
    --batch-size "$BATCH" --plain-batches 20 --json "$out/bench_$backbone.json" ${BENCH_EXTRA:-} \
    >"$out/bench_$backbone.txt" 2>&1
  echo "bench $backbone: exit $? after $(( $(date +%s) - started )) s" | tee -a "$out/env.txt"
  tail -6 "$out/bench_$backbone.txt"
done

[ "${TRAITS:-1}" = 1 ] || exit 0
started=$(date +%s)
work=$(mktemp -d)
timeout "${TRAITS_LIMIT_S:-330}" "$PY" -m sxai_plugins.cli traits --data "$data" --class dog --n "$N" \
  --stability "$STABILITY" --ga-batch-size "$BATCH" --batch-size 256 --device "$DEVICE" \
  --invert "$INVERT" --out "$work/traits_dog" ${TRAITS_EXTRA:-} >"$out/traits.log" 2>&1
echo "traits: exit $? after $(( $(date +%s) - started )) s" | tee -a "$out/env.txt"
tail -3 "$out/traits.log"
[ -d "$work/traits_dog" ] && tar -C "$work" -czf "$out/traits_dog.tar.gz" traits_dog
exit 0

# A dry run of the whole script on a CPU in a few minutes:
#   PY=.venv/bin/python DEVICE=cpu N=6 STABILITY=3,6 BENCH_IMAGES=2 BATCH=50 INVERT=fourier \
#   BACKBONE_BENCH=resnet18 BENCH_EXTRA="--generations 2 --population 6 --naive-generations 1" \
#   TRAITS_EXTRA="--ga-mode fast --inversion-steps 4" bash scripts/gpu_check.sh DATA_ROOT /tmp/gpu-dry
