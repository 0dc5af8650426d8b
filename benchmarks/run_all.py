"""Run every benchmark with its default (small) settings, one after another."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

for script in (
    "bench_startup.py",
    "bench_spaces.py",
    "bench_detector.py",
    "bench_probe_build.py",
    "bench_discover.py",
    "bench_index.py",
    "bench_inversion.py",
    "bench_genetic.py",
    "bench_predict.py",
    "bench_scale.py",  # needs the ray extra: pip install "sxai[ray]"
):
    print(f"==== {script}", flush=True)
    subprocess.run([sys.executable, str(HERE / script)], check=True)
