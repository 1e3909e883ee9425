"""A run's saved config (``config.json``, or an export's ``encoder.json``), read as untrusted.

A work directory may come from someone else, so its config is read like a command-line config:

    config = saved_config.load("runs/x/config.json")   # ValueError naming the file and field
    saved = saved_config.read_saved(path)              # the raw dict, or None (never raises)

- the file is read only when it is a regular file of at most :data:`MAX_CONFIG_BYTES` (a FIFO
  or ``/dev/zero`` planted in its place cannot block or fill the memory);
- every field is checked: one the schema does not know, a value of the wrong type, and a value
  out of range (:func:`ssl_jax.config.validate`) are a one-line ValueError naming the file and
  the field, never a traceback from deep inside evaluation;
- fields renamed since are migrated, and fields the schema gained since take their defaults,
  so runs written by older versions still load.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

import ml_collections

from ssl_jax import config as config_lib

MAX_CONFIG_BYTES = 1 << 20  # a config.json is a few KB: more is not a config
_REPAIR = "replace it by the run's JSON config, or choose another run directory."


def load_json(path: str) -> Any:
    """The JSON value in ``path`` (a run's config.json): FileNotFoundError when missing, and a
    one-line ValueError naming it when it is no regular file (a FIFO or device would block or
    never end), larger than :data:`MAX_CONFIG_BYTES`, or not JSON."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)  # O_NONBLOCK: a FIFO planted there cannot block the open
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path} is not a regular file: {_REPAIR}")
        data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ValueError(
            f"{path} is over {MAX_CONFIG_BYTES >> 20} MB, too big for a config: {_REPAIR}"
        )
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}): {_REPAIR}") from None


def from_saved(saved: Any, origin: str) -> ml_collections.ConfigDict:
    """A run's saved config (``saved``, the JSON value of the file ``origin``) as a config,
    checked like one from the command line: a field the schema does not know, a value of the
    wrong type or out of range is a one-line ValueError naming ``origin`` and the field. Fields
    renamed since are migrated (:func:`ssl_jax.config.migrate`), and fields the schema gained
    since the run was written take their defaults, so older runs still load."""
    fix = "Correct it in that file (a field left out takes its default) or choose another run."
    if not isinstance(saved, dict):
        kind = {list: "an array", str: "a string"}.get(type(saved), f"the value {saved!r}")
        raise ValueError(
            f"{origin} holds {kind}, not a run config (a JSON object of fields such as "
            f'"method"). {fix}'
        )
    config = config_lib.base_config()
    problems: list[str] = []
    _merge_checked(config, config_lib.migrate(saved), "", problems)
    if not problems:
        try:
            config_lib.validate(config)
        except (ValueError, TypeError, KeyError) as e:
            problems.append(str(e).rstrip("."))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ValueError(f"{origin} is not a valid run config: {problems[0]}{more}. {fix}")
    return config


def _merge_checked(
    target: ml_collections.ConfigDict, values: dict, prefix: str, problems: list[str]
) -> None:
    """Set each of ``values`` in ``target`` (the schema), recursing into groups; a value that
    the schema cannot take adds a line to ``problems`` and is left at its default."""
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in target:
            problems.append(
                config_lib.unknown_field_message(path) + " (written by a newer ssl_jax?)"
            )
        elif isinstance(target[key], ml_collections.ConfigDict):
            if isinstance(value, dict):
                _merge_checked(target[key], value, path + ".", problems)
            else:
                problems.append(f"config.{path}={value!r} must be a group of fields (an object)")
        else:
            value = tuple(value) if isinstance(value, list) else value
            problem = _type_problem(target, key, value)
            if problem:
                problems.append(f"config.{path}={value!r} {problem}")


def _type_problem(target: ml_collections.ConfigDict, key: str, value: Any) -> str | None:
    """Set ``target[key] = value`` with ml_collections' type check (an int for a float is
    fine); what is wrong with ``value`` (None when it was set)."""
    wanted = target.get_type(key)
    name = getattr(wanted, "__name__", str(wanted))
    name = ("an " if name[0] in "aeiou" else "a ") + name
    if value is None:
        if target[key] is None:  # an optional field (a placeholder): None is its default
            return None
        return f"must be {name}, not null"
    if isinstance(value, dict) or (isinstance(value, bool) and wanted in (int, float)):
        return f"must be {name}"
    try:
        target[key] = value
    except TypeError:
        return f"must be {name}"
    return None


def load(path: str) -> ml_collections.ConfigDict:
    """The checked config saved in ``path`` (:func:`load_json`, then :func:`from_saved`)."""
    return from_saved(load_json(path), path)


def read_saved(path: str) -> dict | None:
    """The JSON object in ``path`` as saved (no checks), or None if missing or unreadable."""
    try:
        saved = load_json(path)
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None
