"""The effective configuration and where each value came from: default, file, env or flag.

Layers, lowest first: the dataclass defaults (``node.config``), ``<data-dir>/outpost.toml``,
environment variables ``OUTPOST_<SECTION>_<KEY>`` (for example ``OUTPOST_LOG_FORMAT=json``,
``OUTPOST_NODE_LISTEN=0.0.0.0:8470``; a value is read as TOML when it parses as one — numbers,
booleans, ``["a", "b"]`` — else as a string), then ``outpost run`` flags. ``outpost run`` and
``outpost config show`` both build the config here, so what ``show`` prints is what ``run``
uses. ``outpost init`` writes every default into the file: a file value equal to the default
is reported as ``default``.

Never writes anything; errors are ``ConfigError`` naming the variable or key.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from node import config as cfg

ENV_PREFIX = "OUTPOST_"
Key = tuple[str, str]


def _fields() -> list[Key]:
    return [(name, f.name) for name, cls in cfg._SECTIONS.items()
            for f in dataclasses.fields(cls)]


def env_name(section: str, key: str) -> str:
    return f"{ENV_PREFIX}{section}_{key}".upper()


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def env_overrides(env: Mapping[str, str]) -> dict[Key, Any]:
    return {(s, k): _env_value(env[env_name(s, k)]) for s, k in _fields()
            if env_name(s, k) in env}


def read_file(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise cfg.ConfigError(f"{path} does not exist; run `outpost init` or name a file "
                              "that does") from None
    except tomllib.TOMLDecodeError as exc:
        raise cfg.ConfigError(f"{path} is not valid TOML ({exc}); fix or delete it") from exc


def effective(data_dir: Path, flags: Mapping[Key, Any] | None = None,
              env: Mapping[str, str] | None = None) -> tuple[cfg.Config, dict[str, str]]:
    """The config ``outpost run`` uses, and ``{"section.key": source}`` for every key."""
    path = data_dir / cfg.CONFIG_FILE
    cfg.load(data_dir)  # one set of checks: missing, empty, damaged, no node name
    raw = read_file(path)
    file_config = cfg.from_dict(raw, source=str(path))
    merged: dict[str, dict[str, Any]] = {s: dict(v) for s, v in raw.items()}
    sources: dict[str, str] = {}
    defaults = cfg.Config()
    for section, key in _fields():
        default = getattr(getattr(defaults, section), key)
        in_file = key in raw.get(section, {})
        value = getattr(getattr(file_config, section), key)
        sources[f"{section}.{key}"] = "file" if in_file and value != default else "default"
    for layer, name in ((env_overrides(os.environ if env is None else env), "env"),
                        (flags or {}, "flag")):
        for (section, key), value in layer.items():
            merged.setdefault(section, {})[key] = value
            sources[f"{section}.{key}"] = name
    try:
        config = cfg.from_dict(merged, source=f"{path} with {ENV_PREFIX}* variables and flags")
    except cfg.ConfigError as exc:
        raise cfg.ConfigError(f"{exc} (a variable {ENV_PREFIX}<SECTION>_<KEY> or a flag may "
                              "set it; `outpost config show` lists where each value comes "
                              "from)") from None
    return config, sources


def as_json(config: cfg.Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def check_file(path: Path) -> cfg.Config:
    """Parse and validate one config file as ``outpost run`` would; ConfigError if bad."""
    return cfg.from_dict(read_file(path), source=str(path))
