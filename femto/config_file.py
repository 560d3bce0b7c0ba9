"""`femto train --config FILE`: a TOML file whose keys are train's option names (`batch-size` or
`batch_size`), checked against each option's type. Parsing only: which value wins (the command line
over the file) is the CLI's business, and nothing in the file is executed.
"""

from __future__ import annotations

import pathlib

from femto.errors import ConfigError

# the option kinds a config value can have; a tuple of strings is a choice among them
Kind = type | tuple


def _describe(value) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    return f"{value!r} ({names.get(type(value), type(value).__name__)})"


def _check(key: str, value, kind: Kind, source: str):
    if isinstance(kind, tuple):
        if not isinstance(value, str) or value not in kind:
            raise ConfigError(
                f"{source}: key {key!r} must be one of {', '.join(kind)}, got {_describe(value)}"
            )
        return value
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, kind)
    if not ok:
        wanted = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
        raise ConfigError(
            f"{source}: key {key!r} must be {wanted.get(kind, kind.__name__)}, "
            f"got {_describe(value)}"
        )
    return value


def read_config_file(path: pathlib.Path, options: dict[str, Kind]) -> dict:
    """The file's values by option name (underscored, as click passes them), each checked against
    `options` (name -> kind). An unknown key, a wrong type or a file that is not TOML is one error
    naming the key and the file."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        raise ConfigError("--config needs Python 3.11 or newer (its tomllib reads TOML)") from None

    path = pathlib.Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"--config {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"--config {path} is a directory, not a TOML file") from None
    except OSError as exc:
        raise ConfigError(f"--config {path} cannot be read: {exc.strerror}") from None
    try:
        table = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--config {path} is not UTF-8 (byte {exc.start:,})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path} is not valid TOML: {exc}") from None
    values = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in options:
            known = ", ".join(sorted(n.replace("_", "-") for n in options))
            raise ConfigError(
                f"{path}: unknown key {key!r} (the keys are train's options: {known})"
            )
        if name in values:
            raise ConfigError(f"{path}: key {key!r} is given twice (as - and _ spellings)")
        values[name] = _check(key, value, options[name], str(path))
    return values
