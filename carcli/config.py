"""Training options from a file: `--config FILE` (TOML or YAML) sets any option; flags override it.

Keys are the option names with either dashes or underscores (`img-size` or `img_size`); the file
may hold them at the top level or under a `[train]` table. Values are checked against the option's
type, so a typo or a wrong type is a one-line error instead of a silent default.
"""

from __future__ import annotations

import json
import sys
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

from carcli.errors import UsageError


def read_config_file(path: Path) -> dict[str, Any]:
    """The options in a TOML (.toml) or YAML (.yaml/.yml) file, as a flat dict with underscore keys."""
    if not path.is_file():
        raise UsageError(f"--config: {path} does not exist")
    text = path.read_text()
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover - Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise UsageError(f"--config: {path} must be a .toml, .yaml or .yml file")
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - each parser has its own error types
        raise UsageError(f"--config: {path} cannot be parsed: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config: {path} must hold a table of options")
    data = data.get("train", data)
    return {str(key).replace("-", "_"): value for key, value in data.items()}


def apply_options(config_type: type, base: dict[str, Any], source: str) -> dict[str, Any]:
    """Check option names and value types against the dataclass `config_type`; returns the checked dict."""
    hints = typing.get_type_hints(config_type)
    known = {f.name for f in fields(config_type)}
    checked: dict[str, Any] = {}
    for key, value in base.items():
        if key not in known:
            raise UsageError(f"{source}: unknown option {key!r}")
        checked[key] = _coerce(key, value, hints[key], source)
    return checked


def _coerce(key: str, value: Any, hint: Any, source: str) -> Any:
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    for kind in allowed:
        origin = typing.get_origin(kind) or kind
        if origin is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin in (str, bool) and isinstance(value, origin):
            return value
        if origin in (list, tuple) and isinstance(value, list | tuple):
            return list(value)
        if origin is dict and isinstance(value, dict):
            return dict(value)
    raise UsageError(f"{source}: option {key!r} cannot be {json.dumps(value)}")
