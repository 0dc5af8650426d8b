"""Plugin discovery through real entry points: a distribution on sys.path is all it takes."""

from __future__ import annotations

import importlib.metadata
import sys
import textwrap
from pathlib import Path

import pytest

import sxai_plugins as sx
from sxai_plugins._utils.errors import PluginNotFoundError
from sxai_plugins.plugin import manager as registry

PLUGIN_SOURCE = """
from functools import partial
from sxai_plugins import BackboneSpec, hookimpl
from sxai_plugins.models import build_timm_trait_model

@hookimpl
def sxai_backbones():
    return [BackboneSpec("tiny_from_plugin", partial(build_timm_trait_model, "resnet10t"), "test plugin")]

class Shout:
    name = "shout"
    def render(self, assessment):
        return "IT IS A " + str(assessment).upper()

@hookimpl
def sxai_explanation_templates():
    return [Shout()]
"""


def install_fake_distribution(site: Path, dist: str, module: str, source: str) -> None:
    """Write a real installed distribution (dist-info with entry_points.txt) into ``site``."""
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[sxai]\n{module} = {module}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.path[:] = [p for p in sys.path if p != str(tmp_path)]
    importlib.invalidate_caches()
    registry.reload_plugins()


def test_installed_distribution_is_discovered_and_removed(site: Path) -> None:
    install_fake_distribution(site, "sxai-plugin-tiny", "sxai_tiny_plugin", PLUGIN_SOURCE)
    registry.reload_plugins()
    assert sx.list_backbones()["tiny_from_plugin"] == "sxai-plugin-tiny"
    assert sx.get_explanation_template("shout").render("cat") == "IT IS A CAT"

    sys.path.remove(str(site))
    importlib.invalidate_caches()
    registry.reload_plugins()
    assert "tiny_from_plugin" not in sx.list_backbones()
    with pytest.raises(PluginNotFoundError, match="shout"):
        sx.get_explanation_template("shout")


def test_broken_plugin_is_reported_and_the_rest_keeps_working(site: Path) -> None:
    install_fake_distribution(
        site, "sxai-plugin-broken", "sxai_broken_plugin", "raise ImportError('boom')\n"
    )
    with pytest.warns(RuntimeWarning, match="sxai-plugin-broken.*boom"):
        registry.reload_plugins()
    assert [f.name for f in registry.plugin_failures()] == ["sxai-plugin-broken"]
    assert "lite0_catdog" in sx.list_backbones()


def test_missing_first_party_plugin_names_the_package(monkeypatch) -> None:
    real = importlib.metadata.entry_points

    def without_vgg(
        **kwargs,
    ):  # what the environment looks like after `pip uninstall sxai-plugins-vgg`
        return [
            ep for ep in real(**kwargs) if ep.dist is None or ep.dist.name != "sxai-plugins-vgg"
        ]

    monkeypatch.setattr(registry.importlib.metadata, "entry_points", without_vgg)
    registry.reload_plugins()
    try:
        assert "vgg19" not in sx.list_backbones()
        with pytest.raises(PluginNotFoundError, match=r"sxai-plugins-vgg.*pip install") as info:
            sx.create_model("vgg19", pretrained=False)
        # the distributions are not on PyPI: the message must not send people there
        assert "pip install sxai-plugins-vgg" not in str(info.value)
        assert "`pip install ./sxai_plugins_vgg`" in str(info.value) and "checkout" in str(
            info.value
        )
    finally:
        monkeypatch.undo()
        registry.reload_plugins()


def test_plugins_are_listed_with_their_distribution() -> None:
    table = sx.list_backbones()
    assert table["lite0_catdog"] == "sxai:lite0"  # the core registers through its own entry points
    # the first-party plugins are part of the test set-up (make test installs them): missing ones fail
    assert table.get("vgg19") == table.get("vgg16") == table.get("vgg19_bn") == "sxai-plugins-vgg"
    assert table.get("alexnet") == "sxai-plugins-alexnet"


def test_runtime_registration_of_a_plain_module(tmp_path) -> None:
    module = type(sys)("my_rules")
    exec(textwrap.dedent(PLUGIN_SOURCE), module.__dict__)
    sx.register_plugin(module, name="my_rules")
    try:
        assert "tiny_from_plugin" in sx.list_backbones()
    finally:
        sx.get_plugin_manager().unregister(name="my_rules")


MISSPELLED = """
from sxai_plugins import hookimpl

@hookimpl
def sxai_backbone():  # the hook is sxai_backbones
    return []
"""

HELLO = Path(__file__).parent / "fixtures" / "hello_command" / "sxai_hello_command.py"


def test_a_misspelled_hook_is_refused_with_its_name() -> None:
    module = type(sys)("typo_rules")
    exec(textwrap.dedent(MISSPELLED), module.__dict__)
    with pytest.raises(
        sx.PluginError, match=r"typo_rules.*sxai_backbone\b.*did you mean sxai_backbones\?"
    ):
        sx.register_plugin(module, name="typo_rules")
    assert sx.get_plugin_manager().get_plugin("typo_rules") is None  # refused, not half-registered


def test_an_installed_plugin_with_a_misspelled_hook_is_reported_and_skipped(site: Path) -> None:
    install_fake_distribution(site, "sxai-plugin-typo", "sxai_typo_plugin", MISSPELLED)
    with pytest.warns(RuntimeWarning, match="sxai-plugin-typo.*sxai_backbone"):
        registry.reload_plugins()
    assert [f.name for f in registry.plugin_failures()] == ["sxai-plugin-typo"]
    assert sx.get_plugin_manager().get_plugin("sxai-plugin-typo") is None
    assert "lite0_catdog" in sx.list_backbones()


def test_a_plugin_adds_a_command_to_the_cli(site: Path, capsys) -> None:
    from sxai_plugins.cli.main import main

    install_fake_distribution(site, "sxai-hello-command", "sxai_hello_command", HELLO.read_text())
    registry.reload_plugins()
    assert main(["hello", "world"]) == 0
    assert capsys.readouterr().out.startswith("hello world; ")
    assert main(["hello", "nobody"]) == 2  # a plugin's SxaiError is printed like the core's
    assert "sxai: error: hello: nobody is there to greet" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    assert "hello" in help_text and help_text.index("explain") < help_text.index(
        "hello"
    )  # core first


def test_a_plugin_command_runs_from_the_installed_console_script(site: Path) -> None:
    import os
    import subprocess

    install_fake_distribution(site, "sxai-hello-command", "sxai_hello_command", HELLO.read_text())
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "sxai_plugins", "hello", "there"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("hello there; ")


def test_a_command_name_taken_twice_is_a_clear_error(site: Path, capsys) -> None:
    from sxai_plugins.cli.main import main

    clash = HELLO.read_text().replace('add_parser("hello"', 'add_parser("explain"')
    install_fake_distribution(site, "sxai-clash", "sxai_clash_command", clash)
    registry.reload_plugins()
    assert main(["backbones"]) == 2
    assert "already exists" in capsys.readouterr().err
