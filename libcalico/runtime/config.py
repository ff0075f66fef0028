"""Typed service configuration: environment > config file > defaults, each value logged with source.

A service describes its configuration as a frozen dataclass; ``load_config`` fills it::

    @dataclass(frozen=True)
    class DatastoreConfig:
        listen: tuple[str, ...] = ("unix:///run/calico-lab/sock/datastore.sock",)
        etcd_endpoints: list[str] = field(default_factory=lambda: ["http://127.0.0.1:2379"])
        compaction_interval: float = 300.0
        metrics_port: int | None = None
        log_level: str = "INFO"

    cfg = load_config(DatastoreConfig, env_prefix="CALICO_DATASTORE_")

For each field the value comes from, in order:

1. the environment variable ``<PREFIX><FIELD_UPPER>`` (``CALICO_DATASTORE_ETCD_ENDPOINTS``),
2. the YAML config file, key = the field name (``etcd_endpoints``; ``-`` is read as ``_``),
   the file named by ``--config FILE`` in ``argv`` or else by ``<PREFIX>CONFIG_FILE``,
3. the dataclass default (a field without one is required).

Supported field types: ``str``, ``int``, ``float``, ``bool``, ``pathlib.Path``, ``list[X]`` /
``tuple[X, ...]`` of those, ``Literal["a", "b"]`` of strings, and ``X | None``. In the
environment a list is comma-separated, a bool is one of true/false/yes/no/on/off/1/0, and an
empty value for an optional field means ``None``. The file may use YAML's own types.

A bad value raises ``ValidationError`` naming the variable (or the file and key), so the
process exits at start-up with one clear line — config never changes live; a supervisor
restarts the process with new config. Unknown file keys are errors (they are typos); unknown
``<PREFIX>*`` environment variables are logged as warnings.

Every value is logged once as a structured line ``config value name=... env=... value=...
source=env|file:<path>|default`` (fields whose name contains password, token or secret are
redacted). Because logging is set up *after* config is loaded (the log level is config), the
lines are held until ``setup_logging`` runs; ``load_config_with_sources`` returns them too.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from libcalico.errors import ValidationError
from libcalico.runtime.log import log_when_ready

__all__ = ["ConfigValue", "load_config", "load_config_with_sources"]

T = TypeVar("T")

_LOGGER = "libcalico.runtime.config"
_TRUE = frozenset({"1", "true", "yes", "on", "y", "t"})
_FALSE = frozenset({"0", "false", "no", "off", "n", "f"})
_SECRET_WORDS = ("password", "token", "secret")


@dataclass(frozen=True)
class ConfigValue:
    """Where one field's value came from: ``source`` is ``env``, ``file:<path>`` or ``default``."""

    name: str
    env: str
    value: Any
    source: str


@dataclass(frozen=True)
class _FieldType:
    base: Any  # str, int, float, bool, Path, or a tuple of allowed strings (Literal)
    optional: bool
    container: type | None  # list or tuple when the field holds several values


def _describe(base: Any) -> str:
    if isinstance(base, tuple):
        return "one of " + ", ".join(base)
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean (true/false)",
        Path: "a path",
    }[base]


def _analyse(name: str, hint: Any) -> _FieldType:
    optional = False
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args: Any = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1 or len(typing.get_args(hint)) != 2:
            raise TypeError(f"config field {name}: unsupported union {hint!r}")
        optional = True
        hint = args[0]
        origin = typing.get_origin(hint)
    container: type | None = None
    if origin in (list, tuple):
        args = typing.get_args(hint)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            raise TypeError(f"config field {name}: only tuple[X, ...] is supported")
        container = origin
        hint = args[0] if args else str
        origin = typing.get_origin(hint)
    if origin is Literal:
        values = typing.get_args(hint)
        if not all(isinstance(v, str) for v in values):
            raise TypeError(f"config field {name}: only Literal of strings is supported")
        return _FieldType(tuple(values), optional, container)
    if hint not in (str, int, float, bool, Path):
        raise TypeError(f"config field {name}: unsupported type {hint!r}")
    return _FieldType(hint, optional, container)


def _scalar_from_text(text: str, ftype: _FieldType) -> Any:
    base = ftype.base
    stripped = text.strip()
    if isinstance(base, tuple):
        if stripped in base:
            return stripped
        raise ValueError(f"{text!r} is not {_describe(base)}")
    if base is str:
        return text
    if base is Path:
        if not stripped:
            raise ValueError("an empty path is not allowed")
        return Path(stripped)
    if base is bool:
        low = stripped.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"{text!r} is not {_describe(bool)}")
    try:
        return base(stripped)
    except ValueError:
        raise ValueError(f"{text!r} is not {_describe(base)}") from None


def _from_env(text: str, ftype: _FieldType) -> Any:
    if ftype.optional and text.strip() == "":
        return None
    if ftype.container is not None:
        items = [_scalar_from_text(p.strip(), ftype) for p in text.split(",") if p.strip()]
        return ftype.container(items)
    return _scalar_from_text(text, ftype)


def _scalar_from_yaml(value: Any, ftype: _FieldType) -> Any:
    base = ftype.base
    if isinstance(value, str):
        return _scalar_from_text(value, ftype)
    if isinstance(value, bool):
        if base is bool:
            return value
        raise ValueError(f"{value!r} is not {_describe(base)}")
    if isinstance(value, int) and base in (int, float):
        return base(value)
    if isinstance(value, float) and base is float:
        return value
    if isinstance(value, (int, float)) and base is str:
        return str(value)
    raise ValueError(f"{value!r} is not {_describe(base)}")


def _from_yaml(value: Any, ftype: _FieldType) -> Any:
    if value is None:
        if ftype.optional:
            return None
        raise ValueError("null is not allowed")
    if ftype.container is not None:
        if isinstance(value, str):
            return _from_env(value, ftype)
        if not isinstance(value, list):
            raise ValueError(f"{value!r} is not a list")
        return ftype.container(_scalar_from_yaml(v, ftype) for v in value)
    return _scalar_from_yaml(value, ftype)


def _config_file_path(argv: Sequence[str], environ: Mapping[str, str], prefix: str) -> Path | None:
    for i, arg in enumerate(argv):
        if arg == "--config":
            if i + 1 >= len(argv):
                raise ValidationError("needs a file name", field="--config")
            return Path(argv[i + 1])
        if arg.startswith("--config="):
            return Path(arg.split("=", 1)[1])
    from_env = environ.get(f"{prefix}CONFIG_FILE", "").strip()
    return Path(from_env) if from_env else None


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValidationError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValidationError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValidationError(f"config file {path} must hold a mapping of settings")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _is_secret(name: str) -> bool:
    return any(word in name.lower() for word in _SECRET_WORDS)


def _loggable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_loggable(v) for v in value]
    if isinstance(value, list):
        return [_loggable(v) for v in value]
    return value


def load_config_with_sources(
    cls: type[T],
    *,
    env_prefix: str,
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[T, list[ConfigValue]]:
    """``load_config`` that also returns where each value came from."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls!r} is not a dataclass")
    prefix = env_prefix if not env_prefix or env_prefix.endswith("_") else env_prefix + "_"
    env = os.environ if environ is None else environ
    args = list(sys.argv[1:] if argv is None else argv)

    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    file_path = _config_file_path(args, env, prefix)
    file_data = _read_file(file_path) if file_path is not None else {}
    names = {f.name for f in fields}
    unknown = sorted(set(file_data) - names)
    if unknown:
        raise ValidationError(
            f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}",
            field=f"config file {file_path}",
        )

    values: dict[str, Any] = {}
    sources: list[ConfigValue] = []
    for f in fields:
        ftype = _analyse(f.name, hints[f.name])
        env_name = f"{prefix}{f.name.upper()}"
        if env_name in env:
            try:
                value = _from_env(env[env_name], ftype)
            except ValueError as exc:
                raise ValidationError(str(exc), field=env_name) from None
            source = "env"
        elif f.name in file_data:
            try:
                value = _from_yaml(file_data[f.name], ftype)
            except ValueError as exc:
                raise ValidationError(
                    str(exc), field=f"{f.name} (config file {file_path})"
                ) from None
            source = f"file:{file_path}"
        elif f.default is not dataclasses.MISSING:
            value = f.default
            source = "default"
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
            source = "default"
        else:
            raise ValidationError(
                f"required; set {env_name} or {f.name} in the config file", field=env_name
            )
        values[f.name] = value
        sources.append(ConfigValue(f.name, env_name, value, source))

    try:
        config = cls(**values)
    except ValidationError:
        raise
    except (TypeError, ValueError) as exc:
        raise ValidationError(str(exc), resource=cls.__name__) from None

    if prefix:
        known_env = {f"{prefix}{n.upper()}" for n in names} | {f"{prefix}CONFIG_FILE"}
        for key in sorted(k for k in env if k.startswith(prefix) and k not in known_env):
            log_when_ready(_LOGGER, logging.WARNING, "unknown config variable ignored", env=key)
    for item in sources:
        shown = "<redacted>" if _is_secret(item.name) and item.value else _loggable(item.value)
        log_when_ready(
            _LOGGER,
            logging.INFO,
            "config value",
            name=item.name,
            env=item.env,
            value=shown,
            source=item.source,
        )
    return config, sources


def load_config(
    cls: type[T],
    *,
    env_prefix: str,
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> T:
    """Build ``cls`` from the environment, the config file and its defaults (see module doc).

    ``argv`` defaults to ``sys.argv[1:]`` (only ``--config FILE`` is read from it);
    ``environ`` defaults to ``os.environ``.
    """
    config, _ = load_config_with_sources(cls, env_prefix=env_prefix, argv=argv, environ=environ)
    return config
