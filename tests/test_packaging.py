"""An install without the repository: the wheel ships the configs and the demo asset, and the
corpus and plot dependencies are extras, imported only by the commands that need them."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from nemo_tl.utils.configs import config_file

ROOT = Path(__file__).resolve().parents[1]
EXTRA_MODULES = {"babel": "synth", "espeakng_loader": "synth", "matplotlib": "plots"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """nemo_tl's wheel, built offline from a copy of the sources (the checkout gets no build/)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("nemo_tl", "conf"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
           "--disable-pip-version-check", "-q", str(src), "-w", str(tmp / "dist")]
    subprocess.run(cmd, check=True, cwd=tmp, capture_output=True, text=True)
    (path,) = (tmp / "dist").glob("nemo_tl-*.whl")
    return path


def test_wheel_holds_every_config_and_the_demo_asset(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = sorted(p.name for p in (ROOT / "conf").glob("*.yaml"))
    assert "quartznet_demo.yaml" in configs
    assert {f"nemo_tl/conf/{c}" for c in configs} <= names
    assert "nemo_tl/assets/demo_base_en.nemo" in names
    assert {"nemo_tl/demo.py", "nemo_tl/transcribe.py", "nemo_tl/utils/configs.py"} <= names


def test_corpus_and_plot_dependencies_are_extras(wheel):
    with zipfile.ZipFile(wheel) as z:
        meta = Parser().parsestr(z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode())
    requires = meta.get_all("Requires-Dist")
    unconditional = {r.split(";")[0] for r in requires if "extra ==" not in r}
    assert not any(r.startswith(("babel", "espeakng-loader", "matplotlib")) for r in unconditional), unconditional
    assert any(r.startswith("nemo_toolkit[asr]") for r in unconditional)
    assert {"synth", "plots", "all", "test"} <= set(meta.get_all("Provides-Extra"))

    def extra(name: str) -> set[str]:
        return {r.split(";")[0].split(">")[0].split("=")[0] for r in requires if f'extra == "{name}"' in r}

    assert extra("synth") == {"babel", "espeakng-loader"} and extra("plots") == {"matplotlib"}
    assert extra("all") == extra("synth") | extra("plots")


def test_installed_wheel_reads_its_own_configs_from_another_directory(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check",
                    "-q", "--target", str(site), str(wheel)], check=True, capture_output=True, text=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import nemo_tl.demo as d; from omegaconf import OmegaConf; "
            "print(d.DEMO_CONF); print(d.EMBEDDED_BASE.is_file()); print(OmegaConf.load(d.DEMO_CONF).model.labels)")
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, check=True, capture_output=True,
                         text=True).stdout.splitlines()
    assert out[0] == str(site / "nemo_tl" / "conf" / "quartznet_demo.yaml")
    assert out[1] == "True"


def test_config_file_reads_the_checkouts_conf():
    assert config_file("quartznet_demo") == ROOT / "conf" / "quartznet_demo.yaml"
    assert config_file("distill_ctc.yaml") == ROOT / "conf" / "distill_ctc.yaml"
    with pytest.raises(FileNotFoundError, match="no_such_config.yaml"):
        config_file("no_such_config")


def _module_level_imports(tree: ast.Module) -> set[str]:
    """Top-level module names imported outside any function (also under module-level if/try)."""
    found, todo = set(), list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
        elif isinstance(node, (ast.If, ast.Try, ast.With, ast.ClassDef)):
            todo += [n for field in ("body", "orelse", "finalbody", "handlers") for n in getattr(node, field, [])]
        elif isinstance(node, ast.ExceptHandler):
            todo += node.body
    return found


def test_extras_are_imported_only_inside_the_functions_that_need_them():
    eager = {}
    for path in sorted((ROOT / "nemo_tl").rglob("*.py")):
        names = _module_level_imports(ast.parse(path.read_text(encoding="utf-8"))) & set(EXTRA_MODULES)
        if names:
            eager[str(path.relative_to(ROOT))] = sorted(names)
    assert not eager, f"import these lazily, through nemo_tl.utils.extras.require: {eager}"


def test_a_missing_extra_is_named(monkeypatch, tmp_path):
    from nemo_tl.data.texts import cldr_texts, digit_texts
    from nemo_tl.decoding.multilingual_eval import plot_sweep

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"matplotlib is not installed.*pip install 'nemo_tl\[plots\]'"):
        plot_sweep([{"t_avg": 1.0, "wer": 10.0, "lid_accuracy": 90.0, "tau": 30, "s_th": 0.5}], str(tmp_path / "s.png"))
    monkeypatch.setitem(sys.modules, "babel", None)
    with pytest.raises(ImportError, match=r"babel is not installed.*pip install 'nemo_tl\[synth\]'"):
        cldr_texts("de", 3)
    assert len(digit_texts("de")) == 11_110  # digit texts need no extra
