"""Config: the shipped file parses, defaults hold, every error names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxr_node.config import ConfigError, Destination, NodeConfig, load_config, parse_config, with_overrides

REPO = Path(__file__).resolve().parents[1]


def test_shipped_config_equals_embedded_defaults():
    # configs/node.toml documents every key with its default value.
    assert load_config(REPO / "configs" / "node.toml") == NodeConfig()


def test_every_setting_is_documented_in_the_shipped_config():
    text = (REPO / "configs" / "node.toml").read_text()
    from cxr_node.config import _SCHEMA

    for section, keys in _SCHEMA.items():
        assert f"[{section}]" in text, section
        for key in keys:
            assert f"{key} =" in text, f"{section}.{key} is not documented in configs/node.toml"


@pytest.mark.parametrize(
    "data,key",
    [
        ({"node": {"port": "eleven"}}, "node.port"),
        ({"node": {"port": 70000}}, "node.port"),
        ({"node": {"ae_title": "MUCH_TOO_LONG_AE_TITLE"}}, "node.ae_title"),
        ({"node": {"colour": "blue"}}, "node.colour"),
        ({"nodes": {}}, "nodes"),
        ({"receiver": {"allowed_calling_aets": ["OK", "BAD\\AET"]}}, "receiver.allowed_calling_aets[1]"),
        ({"destination": {"ae_title": "PACS", "host": "h"}}, "destination.port"),
        ({"destination": {"ae_title": "PACS", "host": "h", "port": 104, "tls": True}}, "destination.tls"),
        ({"models": {"allow_untrained": "yes"}}, "models.allow_untrained"),
        ({"models": {"device": "tpu"}}, "models.device"),
        ({"analysis": {"input_size": 8}}, "analysis.input_size"),
        ({"results": {"cam_panels": "three"}}, "results.cam_panels"),
        ({"worker": {"lease_s": 0}}, "worker.lease_s"),
        ({"dispatcher": {"retry_delays_s": []}}, "dispatcher.retry_delays_s"),
        ({"dispatcher": {"max_attempts": -1}}, "dispatcher.max_attempts"),
        ({"dispatcher": {"give_up_after_s": -5}}, "dispatcher.give_up_after_s"),
        ({"destinations": {"name": "a"}}, "destinations"),
        ({"destinations": [{"type": "dicom"}]}, "destinations[0].name"),
        ({"destinations": [{"name": "a", "type": "dicom"}, {"name": "b b", "type": "dicom"}]}, "destinations[1].name"),
        ({"destinations": [{"name": "a"}]}, "destinations[0].type"),
        (
            {
                "destination": {"ae_title": "PACS", "host": "h", "port": 104},
                "destinations": [{"name": "pacs", "type": "dicomweb", "url": "http://h/dicom-web"}],
            },
            "destinations",
        ),
        ({"web": {"enabled": True, "bind": "0.0.0.0"}}, "web.token"),
        ({"web": {"enabled": True, "bind": "10.0.0.2", "token": "short"}}, "web.token"),
        ({"web": {"port": -1}}, "web.port"),
    ],
)
def test_errors_name_the_key(data, key):
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert str(err.value).startswith(key), str(err.value)


def test_unreadable_and_invalid_files_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="missing.toml: cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[node\nport=1")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_config(bad)


def test_command_line_overrides_win_and_are_checked(tmp_path):
    cfg = with_overrides(NodeConfig(), port=4000, destination="PACS@10.1.2.3:104", storage=tmp_path)
    assert cfg.port == 4000 and cfg.destination == Destination("PACS", "10.1.2.3", 104)
    assert cfg.db_url == f"sqlite:///{(tmp_path / 'cxr-node.db').resolve()}"
    with pytest.raises(ConfigError, match="--destination"):
        with_overrides(NodeConfig(), destination="PACS:104")
    with pytest.raises(ConfigError, match="--ae-title"):
        with_overrides(NodeConfig(), ae_title="")


def test_legacy_destination_joins_the_destinations_as_pacs():
    cfg = parse_config(
        {
            "destination": {"ae_title": "PACS", "host": "10.0.0.5", "port": 104},
            "destinations": [{"name": "web", "type": "dicomweb", "url": "http://h:8042/dicom-web"}],
        }
    )
    assert cfg.destination_names == ("pacs", "web")
    pacs, web = cfg.destination_specs
    assert (pacs.type, pacs.options) == ("dicom", {"ae_title": "PACS", "host": "10.0.0.5", "port": 104})
    assert (web.type, web.options, web.key) == ("dicomweb", {"url": "http://h:8042/dicom-web"}, "destinations[0]")
    assert NodeConfig().destination_names == ()
    assert with_overrides(NodeConfig(), destination="PACS@h:104").destination_names == ("pacs",)


def test_every_problem_is_reported_at_once(tmp_path):
    from cxr_node.config import ConfigErrors

    data = {
        "node": {"port": "eleven", "colour": "blue"},
        "receiver": {"max_associations": 0},
        "nodes": {},
        "destination": {"ae_title": "PACS", "host": "h"},
    }
    with pytest.raises(ConfigErrors) as err:
        parse_config(data)
    keys = [line.split(":")[0] for line in err.value.problems]
    assert keys == ["node.port", "node.colour", "receiver.max_associations", "nodes", "destination.port"]


def test_config_check_prints_each_problem_on_its_own_line(tmp_path):
    from click.testing import CliRunner

    from cxr_node.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text('[node]\nport = "eleven"\nummask = "027"\n[worker]\nmax_attempts = 0\n')
    result = CliRunner().invoke(main, ["config", "check", str(bad)])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert [line.split(":")[1].strip() for line in lines] == ["node.port", "node.ummask", "worker.max_attempts"]
