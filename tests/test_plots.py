"""``sxai_plugins.viz.plots`` draws with matplotlib's Figure API only: calling any of its functions
leaves the caller's matplotlib backend alone and never loads the global-state interface."""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

# A backend a notebook would have; when matplotlib-inline is not installed, "svg" stands in: any
# non-Agg name shows a switch (an unloadable name would also fail as soon as someone used it).
BACKEND = (
    "module://matplotlib_inline.backend_inline"
    if importlib.util.find_spec("matplotlib_inline")
    else "svg"
)

# Every plotting function, called once with small inputs, in a fresh interpreter.
SCRIPT = r"""
import json, sys
from pathlib import Path
from types import SimpleNamespace

import matplotlib
import numpy as np
import torch
from PIL import Image

from sxai_plugins.explain.trust import assessment_from_probabilities
from sxai_plugins.robust.adversarial import AdversarialReport, DetectionRule, EpsilonResult, RuleResult
from sxai_plugins.spaces.space import Reference, SemanticSpace
from sxai_plugins.traits.layers import LayerRatio
from sxai_plugins.viz import plots

out = Path(sys.argv[1])
seen = {"start": matplotlib.get_backend()}
called = []

def call(name, *args, **kwargs):
    written = getattr(plots, name)(*args, **kwargs)
    for path in written if isinstance(written, list) else [written]:
        assert Image.open(path).size[0] > 50, path
    called.append(name)

rng = np.random.default_rng(0)
call("plot_information_ratios", np.array([0.5, 0.3, 0.2]), out / "ratios.png")
call("plot_stability", SimpleNamespace(sizes=[5, 10], spreads={5: 3.0, 10: 1.5}, repeats=3), out / "stability.png")
call("plot_layer_ratios", [LayerRatio("b0", "Sequential", 8, 4, 4, 0.4, 0.5, 16),
                           LayerRatio("gap", "gap", 8, 1, 1, 0.6, 0.6, 1)], out / "layers.png")
three = assessment_from_probabilities("cat", {"cat.eyes": 0.9, "cat.nose": 0.4, "dog.ears": 0.2})
call("radar_map", three, out / "radar3.png")
call("radar_map", assessment_from_probabilities("cat", {"cat.eyes": 0.9}), out / "radar1.png")
space = SemanticSpace("cat", "eyes", "tiny", "f", 8, torch.tensor([5, 2]), torch.tensor([-0.5, 2.0]))
space.reference = Reference(0.0, 1.0, -2.0, 2.5, 200, 0.99)
call("distribution_plot", space, rng.normal(0, 1, 200), out / "distribution.png")
images = []
for i in range(4):
    Image.new("RGB", (40, 30), (60 * i, 0, 0)).save(out / f"{i}.png")
    images.append(out / f"{i}.png")
call("extreme_sheets", space, images, np.array([0.01, 0.05, 0.95, 0.99]), out / "sheets")
result = EpsilonResult(0.01, 4, 3, 0.75, [RuleResult("paper", 2, 2 / 3, 1, 0.25)], 0.5, 0.9, n_clean=4,
                       auc=0.8, roc={"fpr": [0.0, 0.25, 1.0], "tpr": [0.0, 0.67, 1.0]})
report = AdversarialReport(n_images=4, n_correct=4, labels="folders", steps=2, step_size_factor=2.5,
                           rules=[DetectionRule()], results=[result])
call("roc_figure", report, out / "roc.png")
# contact_sheet is drawn by extreme_sheets; Captum's visualisation module imports the global-state
# interface itself, so comparison_figure comes last, after that is checked
seen["pyplot_before_captum"] = "matplotlib.pyplot" in sys.modules
called.append("contact_sheet")
image = rng.random((24, 24, 3))
region = np.zeros((24, 24), bool)
region[5:15, 5:15] = True
call("comparison_figure", image, [("ig", torch.rand(3, 24, 24)), ("none", torch.zeros(3, 24, 24))],
     out / "comparison.png", region, title="a cat")
seen["end"] = matplotlib.get_backend()
seen["called"] = called
print(json.dumps(seen))
"""


def test_plots_leave_the_backend_alone_and_never_load_pyplot(tmp_path):
    env = {**os.environ, "MPLBACKEND": BACKEND}
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["start"] == BACKEND
    assert seen["end"] == BACKEND  # no matplotlib.use("Agg") behind the caller's back
    assert seen["pyplot_before_captum"] is False
    from sxai_plugins.viz import plots

    drawing = {name for name in plots.__all__ if inspect.isfunction(getattr(plots, name))}
    assert drawing - {"new_figure", "save_figure", "radar_data", "radar_figure"} == set(
        seen["called"]
    )


def test_no_module_of_the_package_uses_pyplot():
    root = Path(__file__).resolve().parents[1] / "sxai_plugins"
    for path in root.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert (
            "import matplotlib.pyplot" not in text and "from matplotlib import pyplot" not in text
        ), path
        assert "matplotlib.use(" not in text, path
