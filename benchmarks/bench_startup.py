"""How long the command line takes to start: ``sxai --help``, ``sxai backbones`` and an argument
error, each in a fresh interpreter (median of --repeats runs), beside ``python -c "import torch"``
for scale. Target: under 1 s for the three sxai commands.

    python benchmarks/bench_startup.py [--repeats 5] [--json F]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

TARGET_S = 1.0
CASES = {
    "sxai --help": ["-m", "sxai_plugins", "--help"],
    "sxai backbones": ["-m", "sxai_plugins", "backbones"],
    "sxai predict --batch-size x (argument error)": [
        "-m",
        "sxai_plugins",
        "predict",
        "x.jpg",
        "--batch-size",
        "x",
    ],
    "python -c 'import torch' (for scale)": ["-c", "import torch"],
}


def median_seconds(args: list[str], repeats: int) -> tuple[float, set[str]]:
    times, heavy = [], set()
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], capture_output=True, check=False)
        times.append(time.perf_counter() - start)
    # which heavy libraries the command imports (one extra run, not timed)
    probe = (
        "import runpy, sys; sys.argv = ['sxai'] + sys.argv[1:]\n"
        "try:\n    runpy.run_module('sxai_plugins', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', *sorted(m for m in ('torch', 'timm', 'captum', 'matplotlib', 'skimage', "
        "'sklearn', 'scipy', 'huggingface_hub') if m in sys.modules), file=sys.stderr)"
    )
    if args[:2] == ["-m", "sxai_plugins"]:
        done = subprocess.run(
            [sys.executable, "-c", probe, *args[2:]], capture_output=True, text=True
        )
        line = next((x for x in done.stderr.splitlines() if x.startswith("HEAVY")), "HEAVY")
        heavy = set(line.split()[1:])
    return statistics.median(times), heavy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    rows = []
    for name, argv in CASES.items():
        seconds, heavy = median_seconds(argv, args.repeats)
        rows.append(
            {
                "case": name,
                "median_s": round(seconds, 3),
                "heavy_imports": sorted(heavy),
                "target_s": TARGET_S if name.startswith("sxai") else None,
            }
        )
    print(json.dumps(rows, indent=2))
    print(f"\n| command | median of {args.repeats} (s) | heavy libraries imported | target |")
    print("|---|---|---|---|")
    for r in rows:
        target = (
            "—"
            if r["target_s"] is None
            else f"< {r['target_s']:g} s " + ("met" if r["median_s"] < r["target_s"] else "MISSED")
        )
        print(
            f"| `{r['case']}` | {r['median_s']:.2f} | {', '.join(r['heavy_imports']) or 'none'} | {target} |"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
