"""Recipes: the ``get_config()`` files of ``configs/``, chosen by name or by path, with variants.

    config = recipes.load("simclr_fashion_mnist:quick")          # a recipe shipped with ssl_jax
    config = recipes.load("configs/simclr_fashion_mnist.py")     # a file (yours or ours)
    for recipe in recipes.available():                           # what `ssl-jax recipes` lists
        recipe.name, recipe.description, recipe.variants

A recipe is a Python file defining ``get_config(arg=None)`` that returns an
``ml_collections.ConfigDict``; ``NAME:VARIANT`` passes ``VARIANT`` as ``arg``. The recipes of
``ssl_jax`` also declare ``VARIANTS = {name: one-line description}``, so a misspelt variant is
caught before the recipe runs. The repository keeps them in ``configs/``; a wheel installs the same
files as ``ssl_jax/configs/`` (pyproject.toml maps one onto the other).

Every mistake a user can make here (no such file or name, a misspelt variant, a recipe that
raises, one without ``get_config``) is a :class:`RecipeError` of one line naming the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
import traceback
from types import ModuleType
from typing import Any

import ml_collections

SEE_ALSO = "`ssl-jax recipes` lists them"


class RecipeError(ValueError):
    """A recipe that cannot be found or loaded; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A recipe file: its name (the file's stem), path, one-line description (the first
    paragraph of its docstring) and variants (``{name: description}``; None if undeclared)."""

    name: str
    path: str
    description: str
    variants: dict[str, str] | None


def recipes_dir() -> str:
    """The directory of the shipped recipes: ``ssl_jax/configs`` in an installed wheel, else the
    repository's ``configs/`` (a source checkout, an editable install)."""
    package = os.path.dirname(os.path.abspath(__file__))
    installed = os.path.join(package, "configs")
    return (
        installed if os.path.isdir(installed) else os.path.join(os.path.dirname(package), "configs")
    )


def names() -> list[str]:
    """The names of the shipped recipes, sorted."""
    folder = recipes_dir()
    if not os.path.isdir(folder):
        return []
    return sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py") and f[0] not in "_.")


def split_spec(spec: str) -> tuple[str, str | None]:
    """``'name:variant'`` -> ``('name', 'variant')``; ``'name'`` -> ``('name', None)``. A colon
    inside a path (``C:\\...``) is no variant separator."""
    target, sep, variant = spec.rpartition(":")
    if not sep or not target or "/" in variant or "\\" in variant:
        return spec, None
    return target, variant or None


def resolve(spec: str) -> tuple[str, str | None]:
    """The recipe file and variant that ``spec`` names: ``NAME[:VARIANT]`` (a shipped recipe) or
    ``PATH.py[:VARIANT]``. A missing ``configs/NAME.py`` (the README's form, typed outside a
    checkout) falls back to the shipped recipe NAME."""
    target, variant = split_spec(spec.strip())
    if not target:
        raise RecipeError(f"no recipe given: give a recipe name or a .py file; {SEE_ALSO}.")
    if os.path.isdir(target):
        raise RecipeError(
            f"{target} is a directory: give a recipe file in it (a .py file defining "
            f"get_config) or a recipe name; {SEE_ALSO}."
        )
    if not (target.endswith(".py") or "/" in target or os.sep in target):  # a name
        path = os.path.join(recipes_dir(), target + ".py")
        if not os.path.isfile(path):
            raise RecipeError(f"unknown recipe {target!r}{_did_you_mean(target)}; {SEE_ALSO}.")
        return path, variant
    if os.path.isfile(target):
        return os.path.abspath(target), variant
    stem = os.path.basename(target)[:-3] if target.endswith(".py") else ""
    shipped = os.path.join(recipes_dir(), stem + ".py")
    parent = os.path.basename(os.path.dirname(os.path.normpath(target)))
    if stem and parent == "configs" and not os.path.isabs(target) and os.path.isfile(shipped):
        return shipped, variant
    name_hint = _did_you_mean(stem) if stem else ""
    raise RecipeError(
        f"no recipe file {target}{name_hint}: give an existing .py file or a recipe name; "
        f"{SEE_ALSO}."
    )


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name, names(), n=3, cutoff=0.5)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def load_module(path: str) -> ModuleType:
    """Execute a recipe file as a module (a fresh one each time); its errors as RecipeError."""
    name = "ssl_jax_recipe_" + os.path.basename(path)[:-3].replace("-", "_").replace(".", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RecipeError(f"cannot load {path} as Python: a recipe is a .py file.")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise RecipeError(f"{path}:{e.lineno}: syntax error: {e.msg}.") from None
    except Exception as e:  # noqa: BLE001 - the user's file: report it, one line
        raise RecipeError(f"{_where(e, path)} raised {_one_line(e)}. Fix the recipe.") from None
    return module


def _where(error: BaseException, path: str) -> str:
    """``path:line`` of the deepest frame of ``error`` inside the recipe file (else ``path``)."""
    lines = [f.lineno for f in traceback.extract_tb(error.__traceback__) if f.filename == path]
    return f"{path}:{lines[-1]}" if lines else path


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or "(no message)"
    return f"{type(error).__name__}: {text}"


def variants_of(module: ModuleType) -> dict[str, str] | None:
    """A recipe module's declared ``VARIANTS`` ({name: description}), or None."""
    variants = getattr(module, "VARIANTS", None)
    return dict(variants) if isinstance(variants, dict) else None


def load(spec: str) -> ml_collections.ConfigDict:
    """The config of ``spec`` (``NAME[:VARIANT]`` or ``PATH.py[:VARIANT]``): the recipe's
    ``get_config(VARIANT)``, or ``get_config()`` without a variant."""
    return _load(spec)[0]


def _load(spec: str) -> tuple[ml_collections.ConfigDict, ModuleType, str]:
    """(config, module, path) of ``spec``."""
    path, variant = resolve(spec)
    module = load_module(path)
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise RecipeError(
            f"{path} defines no get_config(): a recipe defines `def get_config(arg=None)` "
            "returning an ml_collections.ConfigDict (e.g. configs/simclr_fashion_mnist.py)."
        )
    name = os.path.basename(path)[:-3]
    variants = variants_of(module)
    if variant is not None and variants is not None and variant not in variants:
        valid = ", ".join(f"{name}:{v}" for v in variants)
        valid = f"use one of {valid} or plain {name}" if variants else f"{name} has none"
        raise RecipeError(f"unknown variant {variant!r} of recipe {name}: {valid}.")
    try:
        config = get_config() if variant is None else get_config(variant)
    except Exception as e:  # noqa: BLE001 - the user's file: report it, one line
        shown = f"{name}:{variant}" if variant is not None else name
        raise RecipeError(
            f"recipe {shown} failed ({_where(e, path)}): {_one_line(e)}. Fix the recipe or "
            "its variant."
        ) from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise RecipeError(
            f"get_config() of {path} returned {type(config).__name__}, not an "
            "ml_collections.ConfigDict: start from ssl_jax.config.base_config() and return it."
        )
    return config, module, path


def available() -> list[Recipe]:
    """Every shipped recipe, by name (each file is executed to read its docstring and
    VARIANTS; a broken one is listed with its error as the description)."""
    out = []
    for name in names():
        path = os.path.join(recipes_dir(), name + ".py")
        try:
            module = load_module(path)
        except RecipeError as e:
            out.append(Recipe(name, path, f"(cannot be loaded: {e})", None))
            continue
        out.append(Recipe(name, path, describe(module.__doc__), variants_of(module)))
    return out


def describe(doc: str | None) -> str:
    """The first paragraph of a docstring on one line."""
    first = (doc or "").strip().split("\n\n")[0]
    return " ".join(first.split())


def listing(recipes: list[Recipe] | None = None) -> str:
    """What ``ssl-jax recipes`` prints: each recipe, its description and its variants."""
    recipes = available() if recipes is None else recipes
    lines = [
        f"recipes ({recipes_dir()}): ssl-jax pretrain --config NAME[:VARIANT] --workdir DIR",
        "",
    ]
    for r in recipes:
        lines.append(f"{r.name}\n    {r.description}")
        for variant, text in (r.variants or {}).items():
            lines.append(f"    :{variant:<8} {text}")
    lines.append("\n`ssl-jax recipes NAME[:VARIANT]` shows the values a recipe sets.")
    return "\n".join(lines)


def show(spec: str) -> str:
    """What ``ssl-jax recipes NAME[:VARIANT]`` prints: the recipe's description and variants,
    then every field whose value differs from the defaults of ssl_jax/config.py."""
    from ssl_jax import config as config_lib

    config, module, path = _load(spec)
    variants = variants_of(module) or {}
    changed = config_lib.differences(config_lib.base_config(), config)
    lines = [f"{spec} ({path})", f"    {describe(module.__doc__)}"]
    lines += [f"    :{v:<8} {t}" for v, t in variants.items()]
    lines.append(f"\nfields it sets (of `ssl-jax pretrain --config {spec} --help`'s list):")
    lines += [f"  {name} = {value!r}" for name, value in changed]
    return "\n".join(lines)


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> list[str]:
    """Set ``overrides`` on ``config`` in place: dotted names (``{'model.encoder': 'resnet18'}``)
    or a dict per group (``{'model': {'encoder': 'resnet18'}}``); a list becomes a tuple. Returns
    the dotted names set. An unknown name or a value of the wrong type is a ValueError naming the
    field."""
    from ssl_jax import config as config_lib

    flat = config_lib.flatten(overrides)
    for path, value in flat.items():
        *groups, leaf = path.split(".")
        node = config
        for group in groups:
            node = node.get(group) if isinstance(node, ml_collections.ConfigDict) else None
        if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
            raise ValueError(config_lib.unknown_field_message(path) + ".")
        if isinstance(node[leaf], ml_collections.ConfigDict):
            raise ValueError(f"config field '{path}' is a group: set its fields ({path}.FIELD).")
        try:
            node[leaf] = tuple(value) if isinstance(value, list) else value
        except TypeError:
            raise ValueError(
                f"config.{path}={value!r} has the wrong type: the field holds "
                f"{node.get_type(leaf).__name__} values."
            ) from None
    return list(flat)


def load_with_overrides(
    spec: str | ml_collections.ConfigDict, overrides: dict[str, Any]
) -> ml_collections.ConfigDict:
    """A recipe (name, path or a ConfigDict, copied) with ``overrides`` applied
    (:func:`apply_overrides`), its duration settled (:func:`ssl_jax.config.settle_duration`)."""
    from ssl_jax import config as config_lib

    if isinstance(spec, ml_collections.ConfigDict):
        config = spec.copy_and_resolve_references()
    else:
        config = load(spec)
    given = apply_overrides(config, overrides)
    config_lib.settle_duration(config, given)
    return config
