"""load_config: env > file > defaults, typed parsing, errors naming the variable, source lines."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from libcalico.errors import ValidationError
from libcalico.runtime import log as runtime_log
from libcalico.runtime.config import load_config, load_config_with_sources

PREFIX = "CALICO_DATASTORE_"


@dataclass(frozen=True)
class DatastoreConfig:
    listen: tuple[str, ...] = ("unix:///run/calico-lab/sock/datastore.sock",)
    etcd_endpoints: list[str] = field(default_factory=lambda: ["http://127.0.0.1:2379"])
    compaction_interval: float = 300.0
    max_watchers: int = 100
    debug_dump: bool = False
    state_dir: Path = Path("/run/calico-lab")
    metrics_port: int | None = None
    otlp_endpoint: str | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    etcd_password: str = ""


@dataclass(frozen=True)
class Required:
    node_name: str
    port: int = 1


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """Runtime logging into a buffer (JSON), restored afterwards."""
    runtime_log.reset_logging()  # drop lines held from earlier tests
    buf = io.StringIO()
    runtime_log.setup_logging("test", "DEBUG", json=True, stream=buf)
    yield buf
    runtime_log.reset_logging()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "datastore.yaml"
    path.write_text(text)
    return path


def test_defaults_when_nothing_is_set() -> None:
    cfg, sources = load_config_with_sources(DatastoreConfig, env_prefix=PREFIX, argv=[], environ={})
    assert cfg == DatastoreConfig()
    assert {s.source for s in sources} == {"default"}


def test_env_beats_file_beats_default(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "etcd_endpoints: [http://10.0.0.1:2379, http://10.0.0.2:2379]\n"
        "max_watchers: 7\n"
        "compaction_interval: 60\n",
    )
    env = {f"{PREFIX}MAX_WATCHERS": "9", f"{PREFIX}DEBUG_DUMP": "yes"}
    cfg, sources = load_config_with_sources(
        DatastoreConfig, env_prefix=PREFIX, argv=["--config", str(path)], environ=env
    )
    assert cfg.max_watchers == 9  # env over file
    assert cfg.etcd_endpoints == ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]  # file
    assert cfg.compaction_interval == 60.0 and isinstance(cfg.compaction_interval, float)
    assert cfg.debug_dump is True
    assert cfg.state_dir == Path("/run/calico-lab")  # default
    by_name = {s.name: s.source for s in sources}
    assert by_name["max_watchers"] == "env"
    assert by_name["debug_dump"] == "env"
    assert by_name["etcd_endpoints"] == f"file:{path}"
    assert by_name["compaction_interval"] == f"file:{path}"
    assert by_name["state_dir"] == "default"


def test_config_file_from_env_and_equals_form(tmp_path: Path) -> None:
    path = _write(tmp_path, "max-watchers: 3\n")  # dashes read as underscores
    env = {f"{PREFIX}CONFIG_FILE": str(path)}
    assert load_config(DatastoreConfig, env_prefix=PREFIX, argv=[], environ=env).max_watchers == 3
    cfg = load_config(DatastoreConfig, env_prefix=PREFIX, argv=[f"--config={path}"], environ={})
    assert cfg.max_watchers == 3


def test_env_parsing_of_each_type() -> None:
    env = {
        f"{PREFIX}LISTEN": "unix:///tmp/a.sock, 127.0.0.1:5000,",
        f"{PREFIX}ETCD_ENDPOINTS": "http://e1:2379",
        f"{PREFIX}DEBUG_DUMP": "off",
        f"{PREFIX}STATE_DIR": "/var/lib/calico",
        f"{PREFIX}METRICS_PORT": "9091",
        f"{PREFIX}OTLP_ENDPOINT": "",
        f"{PREFIX}LOG_LEVEL": "DEBUG",
    }
    cfg = load_config(DatastoreConfig, env_prefix=PREFIX, argv=[], environ=env)
    assert cfg.listen == ("unix:///tmp/a.sock", "127.0.0.1:5000")
    assert cfg.etcd_endpoints == ["http://e1:2379"]
    assert cfg.debug_dump is False
    assert cfg.state_dir == Path("/var/lib/calico")
    assert cfg.metrics_port == 9091
    assert cfg.otlp_endpoint is None  # empty value of an optional field
    assert cfg.log_level == "DEBUG"


def test_prefix_without_trailing_underscore() -> None:
    cfg = load_config(
        DatastoreConfig,
        env_prefix="CALICO_DATASTORE",
        argv=[],
        environ={"CALICO_DATASTORE_MAX_WATCHERS": "5"},
    )
    assert cfg.max_watchers == 5


@pytest.mark.parametrize(
    ("var", "value", "reason"),
    [
        ("MAX_WATCHERS", "lots", "'lots' is not an integer"),
        ("COMPACTION_INTERVAL", "5m", "'5m' is not a number"),
        ("DEBUG_DUMP", "maybe", "'maybe' is not a boolean (true/false)"),
        ("METRICS_PORT", "x", "'x' is not an integer"),
        ("LOG_LEVEL", "LOUD", "'LOUD' is not one of DEBUG, INFO, WARNING, ERROR"),
    ],
)
def test_bad_env_value_names_the_variable(var: str, value: str, reason: str) -> None:
    with pytest.raises(ValidationError) as info:
        load_config(DatastoreConfig, env_prefix=PREFIX, argv=[], environ={PREFIX + var: value})
    assert info.value.field == PREFIX + var
    assert str(info.value) == f"{PREFIX}{var}: {reason}"


def test_bad_file_value_names_file_and_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "max_watchers: [1, 2]\n")
    with pytest.raises(ValidationError) as info:
        load_config(DatastoreConfig, env_prefix=PREFIX, argv=["--config", str(path)], environ={})
    assert str(info.value) == f"max_watchers (config file {path}): [1, 2] is not an integer"


def test_bool_is_not_an_integer_in_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "max_watchers: true\n")
    with pytest.raises(ValidationError, match="True is not an integer"):
        load_config(DatastoreConfig, env_prefix=PREFIX, argv=["--config", str(path)], environ={})


def test_unknown_file_key_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "max_watcher: 3\n")
    with pytest.raises(ValidationError, match=r"unknown setting.*max_watcher;"):
        load_config(DatastoreConfig, env_prefix=PREFIX, argv=["--config", str(path)], environ={})


def test_missing_or_malformed_file(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="cannot read config file"):
        load_config(
            DatastoreConfig, env_prefix=PREFIX, argv=["--config", str(tmp_path / "no.yaml")]
        )
    bad = _write(tmp_path, "- a\n- b\n")
    with pytest.raises(ValidationError, match="must hold a mapping"):
        load_config(DatastoreConfig, env_prefix=PREFIX, argv=["--config", str(bad)], environ={})
    with pytest.raises(ValidationError, match="needs a file name"):
        load_config(DatastoreConfig, env_prefix=PREFIX, argv=["--config"], environ={})


def test_required_field() -> None:
    with pytest.raises(ValidationError) as info:
        load_config(Required, env_prefix="CALICO_NODE_", argv=[], environ={})
    assert info.value.field == "CALICO_NODE_NODE_NAME"
    cfg = load_config(
        Required, env_prefix="CALICO_NODE_", argv=[], environ={"CALICO_NODE_NODE_NAME": "n1"}
    )
    assert cfg.node_name == "n1"


def test_each_value_logged_once_with_source(tmp_path: Path, log_lines: io.StringIO) -> None:
    path = _write(tmp_path, "compaction_interval: 60\n")
    env = {f"{PREFIX}MAX_WATCHERS": "9", f"{PREFIX}ETCD_PASSWORD": "hunter2"}
    load_config(DatastoreConfig, env_prefix=PREFIX, argv=["--config", str(path)], environ=env)
    lines = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    values = {d["name"]: d for d in lines if d["event"] == "config value"}
    assert set(values) == {
        "listen",
        "etcd_endpoints",
        "compaction_interval",
        "max_watchers",
        "debug_dump",
        "state_dir",
        "metrics_port",
        "otlp_endpoint",
        "log_level",
        "etcd_password",
    }
    assert len([d for d in lines if d["event"] == "config value"]) == len(values)
    assert values["max_watchers"] == {
        **values["max_watchers"],
        "value": 9,
        "source": "env",
        "env": f"{PREFIX}MAX_WATCHERS",
        "level": "info",
        "logger": "libcalico.runtime.config",
    }
    assert values["compaction_interval"]["source"] == f"file:{path}"
    assert values["state_dir"] == {**values["state_dir"], "value": "/run/calico-lab"}
    assert values["listen"]["value"] == ["unix:///run/calico-lab/sock/datastore.sock"]
    assert values["etcd_password"]["value"] == "<redacted>"
    assert "hunter2" not in log_lines.getvalue()


def test_lines_before_setup_logging_are_held_until_it_runs() -> None:
    runtime_log.reset_logging()  # as at process start
    try:
        load_config(
            Required, env_prefix="CALICO_NODE_", argv=[], environ={"CALICO_NODE_NODE_NAME": "n1"}
        )
        buf = io.StringIO()
        runtime_log.setup_logging("node", "INFO", json=True, stream=buf)
        events = [json.loads(line) for line in buf.getvalue().splitlines()]
        assert [(e["name"], e["source"]) for e in events if e["event"] == "config value"] == [
            ("node_name", "env"),
            ("port", "default"),
        ]
        assert all(e["service"] == "node" for e in events)
    finally:
        runtime_log.reset_logging()


def test_unknown_prefixed_env_var_is_warned(log_lines: io.StringIO) -> None:
    load_config(
        DatastoreConfig,
        env_prefix=PREFIX,
        argv=[],
        environ={f"{PREFIX}MAX_WATCHER": "3", "CALICO_DATASTORE": "unix:///x.sock"},
    )
    warnings = [
        json.loads(line)
        for line in log_lines.getvalue().splitlines()
        if '"unknown config variable ignored"' in line
    ]
    assert [w["env"] for w in warnings] == [f"{PREFIX}MAX_WATCHER"]
    assert warnings[0]["level"] == "warning"


def test_not_a_dataclass() -> None:
    with pytest.raises(TypeError):
        load_config(dict, env_prefix=PREFIX, argv=[], environ={})
