"""The command line of ``ssl-jax pretrain``: a recipe by name or path, its ``--config.FIELD=VALUE``
overrides, the other flags and ``--help``, parsed into flags and a config, or one line that
names the mistake and its fix.

    parsed = pretrain_args.parse(["--config", "simclr_fashion_mnist:quick", "--workdir", "W"])
    fv, config = parsed            # None when it printed the help instead

``--config`` is resolved by :mod:`ssl_jax.recipes` before ml_collections sees the command line
(a ``config_flags.DEFINE_config_dict`` of the recipe's config then applies the overrides), so a
missing or broken recipe is a sentence, not a traceback through ml_collections.
"""

from __future__ import annotations

from typing import Any

from absl import flags
from ml_collections import config_flags


def parse(argv: list[str]) -> tuple[flags.FlagValues, Any] | None:
    """The flags and the config of ``ssl-jax pretrain ARGV``; None after printing ``--help``.
    Exits (SystemExit) with one line for a missing or broken recipe, a bad override, or both
    total_steps and total_epochs given."""
    spec, argv = _take_config(argv)
    recipe = _load_recipe(spec)
    argv = _apply_nones(argv, recipe)
    wants_help = "--help" in argv or "-h" in argv
    argv = ["ssl-jax pretrain", *(a for a in argv if a not in ("--help", "-h"))]
    fv = _pretrain_flags(argv, recipe)
    if wants_help:
        _pretrain_help(fv, argv, spec)
        return None
    config = _parse(fv, argv)
    if spec is None or fv.workdir is None:
        raise SystemExit(
            "ssl-jax pretrain: both --config RECIPE (a name from `ssl-jax recipes`, or a file) "
            "and --workdir DIR are required."
        )
    from ssl_jax.config import settle_duration

    try:
        settle_duration(config, _overridden(argv))
    except ValueError as e:
        raise SystemExit(f"ssl-jax pretrain: {e}") from None
    return fv, config


def _pretrain_flags(argv: list[str], config: Any = None) -> flags.FlagValues:
    """The flags of `pretrain`; ``--config`` holds ``config`` (the recipe, loaded beforehand by
    :func:`_take_config`; default: the schema's defaults), and ``--config.FIELD=VALUE``
    overrides it."""
    from ssl_jax.config import base_config

    fv = flags.FlagValues()
    try:  # reads the overrides' paths in argv already (a misspelt one raises here)
        config_flags.DEFINE_config_dict(
            "config",
            base_config() if config is None else config,
            "A recipe: a name (`ssl-jax recipes` lists them) or a file defining get_config(), "
            "with an optional :VARIANT (simclr_fashion_mnist:quick, "
            "configs/simclr_fashion_mnist.py).",
            flag_values=fv,
            sys_argv=argv,  # config_flags finds the --config.FIELD overrides here, not in sys.argv
        )
    except (AttributeError, KeyError, TypeError) as e:
        _override_error(e, argv)
    flags.DEFINE_string(
        "workdir", None, "Run directory: checkpoints, metrics, config.", flag_values=fv
    )
    flags.DEFINE_string(
        "coordinator_address", None, "host:port of process 0 (multi-process).", flag_values=fv
    )
    flags.DEFINE_integer(
        "num_processes", None, "Number of processes (multi-process).", flag_values=fv
    )
    flags.DEFINE_integer(
        "process_id", None, "This process's index (multi-process).", flag_values=fv
    )
    return fv


def _parse(fv: flags.FlagValues, argv: list[str]):
    try:
        fv(argv)
        return fv["config"].value
    except (AttributeError, KeyError, TypeError) as e:
        _override_error(e, argv)
    except flags.UnrecognizedFlagError as e:
        name = getattr(e, "flagname", "") or ""
        if name.startswith("config."):
            raise SystemExit(f"ssl-jax: {_unknown_field_message(name[len('config.') :])}") from None
        raise SystemExit(f"ssl-jax: {e}") from None
    except (flags.Error, FileNotFoundError, OSError) as e:
        raise SystemExit(f"ssl-jax: {e}") from None


def _take_config(argv: list[str]) -> tuple[str | None, list[str]]:
    """The recipe spec of ``--config SPEC`` / ``--config=SPEC`` (None if absent) and ``argv``
    without it (the ``--config.FIELD=VALUE`` overrides stay)."""
    rest, spec, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--config", "-config"):
            if i + 1 >= len(argv) or argv[i + 1].startswith("-"):
                raise SystemExit(
                    "ssl-jax pretrain: --config needs a recipe: a name (`ssl-jax recipes` lists "
                    "them) or a file, e.g. --config simclr_fashion_mnist."
                )
            spec, i = argv[i + 1], i + 2
            continue
        if arg.startswith(("--config=", "-config=")):
            spec = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return spec, rest


def _apply_nones(argv: list[str], config: Any) -> list[str]:
    """``argv`` without its ``--config.FIELD=None`` overrides, which are set on ``config`` here
    (ml_collections would parse 'None' as a value of the field's type and fail). Only fields
    whose schema default is None (``ssl_jax.config.base_config``) may be None."""
    from ssl_jax import recipes
    from ssl_jax.config import base_config, flatten

    rest, defaults = [], flatten(base_config().to_dict())
    for arg in argv:
        name, _, value = arg[len("--config.") :].partition("=")
        if not (arg.startswith("--config.") and value in ("None", "none") and config is not None):
            rest.append(arg)
        elif name not in defaults:
            raise SystemExit(f"ssl-jax: {_unknown_field_message(name)}")
        elif defaults[name] is not None:
            raise SystemExit(
                f"ssl-jax: config.{name} cannot be None: give it a value of its type "
                f"(`--help` shows the recipe's)."
            )
        else:
            recipes.apply_overrides(config, {name: None})
    return rest


def _load_recipe(spec: str | None) -> Any:
    """The recipe's config (None without ``--config``); its errors as one line."""
    if spec is None:
        return None
    from ssl_jax import recipes

    try:
        return recipes.load(spec)
    except recipes.RecipeError as e:
        raise SystemExit(f"ssl-jax: {e}") from None


def _overridden(argv: list[str]) -> list[str]:
    """The dotted fields of the ``--config.FIELD=VALUE`` overrides in ``argv``."""
    return [a[len("--config.") :].split("=", 1)[0] for a in argv if a.startswith("--config.")]


def _override_error(e: Exception, argv: list[str]) -> None:
    """Exit with one line for ml_collections' error applying the overrides: AttributeError for a
    misspelt leaf (--config.model.encodr), KeyError for a misspelt group
    (--config.modle.encoder), TypeError for a leaf used as a group (--config.model.encoder.x).
    Names the override and the closest schema field; anything else is re-raised."""
    bad = _unknown_override(argv)
    if bad is not None:
        raise SystemExit(f"ssl-jax: {_unknown_field_message(bad)}") from None
    if not isinstance(e, AttributeError):
        raise e
    msg = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'")
    raise SystemExit(f"ssl-jax: unknown config field in an override: {msg}") from None


def _schema_paths() -> tuple[set[str], set[str]]:
    """(leaf fields, groups) of the config schema as dotted paths: ('model.encoder', 'model')."""
    from ssl_jax.config import base_config, field_names

    leaves = set(field_names(base_config()))
    parts = [name.split(".") for name in leaves]
    return leaves, {".".join(p[:i]) for p in parts for i in range(1, len(p))}


def _unknown_override(argv: list[str]) -> str | None:
    """The first ``--config.PATH`` override whose PATH is no field of the schema, or None."""
    leaves, groups = _schema_paths()
    for arg in argv:
        if arg.startswith("--config."):
            path = arg[len("--config.") :].split("=", 1)[0]
            if path not in leaves and path not in groups:
                return path
    return None


def _unknown_field_message(field: str) -> str:
    """Name the unknown config field and the closest known one (a field, else a group)."""
    import difflib

    from ssl_jax.config import RENAMED, closest_field

    if field in RENAMED:
        return f"config field '{field}' is now '{RENAMED[field]}': use --config.{RENAMED[field]}."
    close = closest_field(field)
    if close is None:
        groups = difflib.get_close_matches(field, _schema_paths()[1], n=1)
        close = f"{groups[0]}.FIELD" if groups else None
    hint = f" (did you mean --config.{close}?)" if close else ""
    return f"unknown config field '{field}'{hint}. See ssl_jax/config.py for every field."


def _pretrain_help(fv: flags.FlagValues, argv: list[str], spec: str | None) -> None:
    """`pretrain --help`: the flags, then every config field with its value: the recipe's
    (and the command line's) with ``--config RECIPE``, else the schema's defaults."""
    from ssl_jax.config import describe_fields

    print(
        "usage: ssl-jax pretrain --config RECIPE[:VARIANT] --workdir DIR "
        "[--config.FIELD=VALUE ...]\n(RECIPE: a name from `ssl-jax recipes`, or a .py file)\n"
    )
    print(fv.module_help(__name__))
    if spec is None:
        print(
            "\nconfig fields, each settable as --config.FIELD=VALUE (the defaults of "
            "ssl_jax/config.py; a recipe changes some: `--config RECIPE --help` shows its "
            "values):\n" + describe_fields()
        )
        return
    print(
        f"\nconfig fields, each settable as --config.FIELD=VALUE (the values of {spec}):\n"
        + describe_fields(_parse(fv, argv))
    )
