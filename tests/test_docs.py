"""The documentation and the plugin template: the strict docs build, the template passing
the conformance kit as generated (and renamed as its README says), and the README's
promises about the Python API and its links."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import boltzbench
from boltzbench import ParameterError
from boltzbench.testing import check_sampler

if sys.version_info >= (3, 11):
    import tomllib
else:  # a dependency of boltzbench on 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "examples" / "sampler-template"
RENAME = (("boltzbench_mysampler", "boltzbench_hmc"), ("boltzbench-mysampler", "boltzbench-hmc"),
          ("mysampler", "hmc"), ("MySampler", "HMC"))


def _import_package(folder: Path, package: str, alias: str):
    """Import ``folder/package/__init__.py`` under a unique module name (no sys.path change)."""
    spec = importlib.util.spec_from_file_location(alias, folder / package / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[alias] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[alias]
    return module


def test_template_as_generated_passes_the_conformance_kit(tmp_path):
    folder = tmp_path / "sampler-template"
    shutil.copytree(TEMPLATE, folder, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    module = _import_package(folder, "boltzbench_mysampler", "_template_as_generated")
    sampler = module.MySampler()
    assert check_sampler(sampler, max_evals=64 * 10_000) == ["double_well"]
    # the entry point names the class, under the name the class declares
    project = tomllib.loads((folder / "pyproject.toml").read_text())
    entry = project["project"]["entry-points"]["boltzbench.samplers"]
    assert entry == {module.MySampler.name: "boltzbench_mysampler:MySampler"}
    with pytest.raises(ParameterError, match="step"):
        module.MySampler(step=0.0)


def test_template_renamed_as_its_readme_says_still_passes(tmp_path):
    folder = tmp_path / "boltzbench-hmc"
    shutil.copytree(TEMPLATE, folder, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    (folder / "boltzbench_mysampler").rename(folder / "boltzbench_hmc")
    for path in (folder / "pyproject.toml", folder / "boltzbench_hmc" / "__init__.py",
                 folder / "tests" / "test_mysampler.py"):
        text = path.read_text()
        for old, new in RENAME:  # the README's sed, in its order
            text = text.replace(old, new)
        path.write_text(text)
    module = _import_package(folder, "boltzbench_hmc", "_template_renamed")
    assert module.HMC.name == "hmc"
    project = tomllib.loads((folder / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["boltzbench.samplers"] == {"hmc": "boltzbench_hmc:HMC"}
    assert project["tool"]["setuptools"]["packages"] == ["boltzbench_hmc"]
    assert check_sampler(module.HMC(step=0.5), max_evals=64 * 10_000) == ["double_well"]


def test_the_kit_rejects_the_template_without_its_metropolis_test(tmp_path):
    """The template test can fail: accepting every proposal (a plain random walk, which
    diffuses instead of sampling exp(−u)) must fail the kit's exact double-well check."""
    folder = tmp_path / "broken"
    shutil.copytree(TEMPLATE, folder, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    init = folder / "boltzbench_mysampler" / "__init__.py"
    text = init.read_text()
    assert "accept = log_u < u - u_y" in text
    init.write_text(text.replace("accept = log_u < u - u_y", "accept = log_u < math.inf")
                    .replace("import torch\n", "import math\n\nimport torch\n", 1))
    module = _import_package(folder, "boltzbench_mysampler", "_template_broken")
    with pytest.raises(AssertionError):
        check_sampler(module.MySampler(), max_evals=64 * 10_000)


def test_readme_python_api_names_exist():
    """Every `boltzbench.X` the README and the docs name is importable from the package."""
    text = (ROOT / "README.md").read_text()
    for path in (ROOT / "docs").rglob("*.md"):
        if "results" not in path.parts:
            text += path.read_text()
    names = set(re.findall(r"\bboltzbench\.([A-Z]\w*|get_\w+|make_cell|run_\w+|load_matrix|param|require)\b", text))
    assert {"ChainSampler", "Sampler", "Budget"} <= names
    missing = sorted(n for n in names if not hasattr(boltzbench, n))
    assert not missing, f"README/docs name boltzbench.{missing}, which do not exist"
    from boltzbench import ChainTrace, Snapshot, SnapshotSchedule, param, require  # noqa: F401  the plugin API
    from boltzbench.samplers.chains import ChainSampler
    assert boltzbench.ChainSampler is ChainSampler


def test_readme_links_the_design_card_inside_the_repository():
    readme = (ROOT / "README.md").read_text()
    assert "../shared/DESIGN.md" not in readme
    assert "(docs/design.md)" in readme and (ROOT / "docs" / "design.md").is_file()
    for target in re.findall(r"\]\(((?:docs|examples)/[^)#]*)", readme):
        assert (ROOT / target).exists(), f"README links {target}, which does not exist"


def test_design_page_is_the_design_card_verbatim():
    card = ROOT.parent / "shared" / "DESIGN.md"
    if not card.is_file():
        pytest.skip(f"{card} not present (a fresh clone has only docs/design.md)")
    page = (ROOT / "docs" / "design.md").read_text()
    note, _, body = page.partition("\n\n")
    assert note.startswith(">") and "design card" in note
    assert body == card.read_text()


def test_components_page_lists_every_builtin_with_its_parameters():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        from gen_components import components_markdown
    finally:
        sys.path.remove(str(ROOT / "docs"))
    from boltzbench.registry import BUILTIN, registry

    page = components_markdown()
    for kind in ("systems", "samplers"):
        for name in BUILTIN[kind]:
            assert f"### `{name}`" in page
            for f in registry(kind).load(name).parameters():
                assert f"| `{f.name}` |" in page
    for name in BUILTIN["metrics"]:
        assert f"| `{name}` |" in page
    # a parameter row carries its type, default, physical flag and help text
    assert "| `temperature` | `float` | `1.0` | yes | kT, in the energy units of U |" in page


def test_docs_build_strict(tmp_path):
    """`mkdocs build --strict`: a broken link, a missing page or an unresolvable API name fails."""
    pytest.importorskip("mkdocs", reason="mkdocs not installed (pip install -e '.[docs]')")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings not installed (pip install -e '.[docs]')")
    pytest.importorskip("material", reason="mkdocs-material not installed (pip install -e '.[docs]')")
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    api = (site / "reference" / "api" / "index.html").read_text()
    for anchor in ("samplers.chains.ChainSampler", "boltzbench.contracts.Snapshot",
                   "boltzbench.contracts.Budget.exhausted", "boltzbench.contracts.SnapshotSchedule.due",
                   "boltzbench.contracts.param", "boltzbench.testing.check_sampler"):
        assert f'id="{anchor}"' in api, anchor
    components = (site / "reference" / "components" / "index.html").read_text()
    assert "ternary2d" in components and "n_chains" in components
