"""Entry-point plugins: found by name; a broken one is named with its reason, the rest work."""

import pytest

from boltzbench.cli import main
from boltzbench.registry import PluginError, registry


@pytest.fixture
def fake_plugins(tmp_path, monkeypatch):
    """A distribution on sys.path whose entry points are a good, a wrong and a missing sampler."""
    dist = tmp_path / "fake_plugins-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-plugins\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[boltzbench.samplers]\n"
        "good_mc = boltzbench.samplers.mc:MetropolisMC\n"
        "not_a_sampler = json:dumps\n"
        "missing = no_such_module_xyz:Sampler\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_entry_points_are_discovered_and_broken_ones_rejected_by_name(fake_plugins):
    samplers = registry("samplers")
    assert {"good_mc", "not_a_sampler", "missing"} <= set(samplers.names())
    assert samplers.load("good_mc").name == "mc"
    with pytest.raises(PluginError, match="'not_a_sampler' is .*not a subclass of boltzbench Sampler"):
        samplers.load("not_a_sampler")
    with pytest.raises(PluginError, match="'missing' .*failed to import: ModuleNotFoundError"):
        samplers.load("missing")


def test_list_names_broken_plugins_and_keeps_listing_the_rest(fake_plugins, capsys):
    assert main(["list", "samplers"]) == 0
    out = capsys.readouterr().out
    assert "not_a_sampler  [broken plugin]" in out and "missing  [broken plugin]" in out
    assert "  md  " in out and "  good_mc  " in out


def test_a_matrix_naming_a_broken_plugin_is_rejected_by_name(fake_plugins, tmp_path, capsys):
    path = tmp_path / "m.toml"
    path.write_text('seeds = [0]\n[budget]\nmax_evals = 1000\n[[systems]]\nname = "double_well"\n'
                    '[[samplers]]\nname = "not_a_sampler"\n')
    assert main(["validate", str(path)]) == 2
    assert "samplers[0].name: sampler 'not_a_sampler'" in capsys.readouterr().err
