"""Configuration loading: every kind of bad config gives one clear message naming the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from driftwatch.cli import main
from driftwatch.config import Secret, load_config
from driftwatch.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
MINIMAL = "paths:\n  watch: [in]\n  products: out\n  state: state\n"


def test_example_config_is_valid():
    cfg = load_config(REPO / "config" / "driftwatch.example.yaml", environ={})
    assert cfg.workers.backend == "local"
    assert cfg.paths.resolved_database_url.startswith("sqlite:///")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.workers.count = 3  # type: ignore[misc]


def test_relative_paths_resolve_against_the_file(write_yaml, tmp_path):
    cfg = load_config(write_yaml(MINIMAL), environ={})
    assert cfg.paths.watch == (tmp_path / "in",)
    assert cfg.paths.resolved_database_url == f"sqlite:///{tmp_path / 'state' / 'driftwatch.sqlite'}"


@pytest.mark.parametrize(
    ("extra", "key", "problem"),
    [
        ("watch:\n  setle_s: 3\n", "watch.setle_s", "unknown key"),
        ("bogus: 1\n", "bogus", "unknown key"),
        ("workers:\n  count: two\n", "workers.count", "expected an integer"),
        ("workers:\n  count: 0\n", "workers.count", "below the minimum"),
        ("watch:\n  observer: fanotify\n", "watch.observer", "one of"),
        ("alerts:\n  rate_per_s: 1000\n", "alerts.rate_per_s", "above the maximum"),
        ("alerts:\n  dry_run: maybe\n", "alerts.dry_run", "true or false"),
        ("pipeline:\n  ccds: [S4, X99]\n", "pipeline.ccds", "not a DECam science CCD"),
        ("alerts:\n  kind_routes: {flash: nowhere}\n", "alerts.kind_routes.flash", "unknown route"),
        ("alerts:\n  webhooks: {default: https://hooks.example/x}\n", "alerts.webhooks", "unknown key"),
    ],
)
def test_bad_values_name_the_key_and_file(write_yaml, extra, key, problem):
    path = write_yaml(MINIMAL + extra)
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    msg = str(err.value)
    assert str(path) in msg and key in msg and problem in msg


@pytest.mark.parametrize("missing", ["watch", "products", "state"])
def test_missing_required_path(write_yaml, missing):
    text = "\n".join(line for line in MINIMAL.splitlines() if missing not in line)
    with pytest.raises(ConfigError, match=f"paths.{missing}: required key is missing"):
        load_config(write_yaml(text), environ={})


def test_invalid_yaml_and_missing_file(write_yaml, tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML at line 3"):
        load_config(write_yaml("paths:\n  watch: [a\n  x: : y\n"), environ={})
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(tmp_path / "nope.yaml", environ={})


def test_secret_from_environment_and_credentials_dir(write_yaml, tmp_path):
    url = "https://hooks.slack.invalid/services/T000/B000/XXXXSECRET"
    cfg = load_config(write_yaml(MINIMAL), environ={"DRIFTWATCH_SLACK_WEBHOOK": url})
    secret = cfg.alerts.webhooks["default"]
    assert isinstance(secret, Secret) and secret.reveal() == url
    assert "XXXXSECRET" not in repr(cfg) and "XXXXSECRET" not in str(cfg.to_dict())
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "slack-webhook").write_text(url + "2\n")
    cfg = load_config(write_yaml(MINIMAL), environ={"CREDENTIALS_DIRECTORY": str(creds)})
    assert cfg.alerts.webhooks["default"].reveal() == url + "2"


def test_config_check_command(write_yaml, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DRIFTWATCH_SLACK_WEBHOOK", "https://hooks.slack.invalid/SECRETPART")
    path = write_yaml(MINIMAL)
    assert main(["config", "check", str(path)]) == 2  # the watch folder does not exist yet
    assert "paths.watch[0]: folder does not exist" in capsys.readouterr().err
    (tmp_path / "in").mkdir()
    assert main(["config", "check", str(path)]) == 0
    out = capsys.readouterr()
    assert "workers:" in out.out and "SECRETPART" not in out.out + out.err
    assert main(["config", "check", str(write_yaml(MINIMAL + "workers: {count: -1}\n", "bad.yaml"))]) == 2
    assert "workers.count" in capsys.readouterr().err
