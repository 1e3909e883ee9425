"""The ``ssl-jax`` command: parse the command line, then call the library. Nothing else.

    ssl-jax pretrain --config configs/simclr_fashion_mnist.py --workdir runs/simclr \
        [--config.total_steps=2000 --config.batch_size=512 ...]
    ssl-jax evaluate --workdir runs/simclr [--label_fractions=0.01,0.1,1.0]
    ssl-jax embed --workdir runs/simclr --data folder:/my/images --out features.npy

Multi-process (one process per host, or several on one machine for testing):

    ssl-jax pretrain ... --coordinator_address=10.0.0.1:1234 --num_processes=2 --process_id=0
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from absl import flags
from ml_collections import config_flags

USAGE = """usage: ssl-jax COMMAND [flags]

commands:
  pretrain   self-supervised pretraining:
             ssl-jax pretrain --config configs/<recipe>.py --workdir DIR [--config.FIELD=VALUE ...]
  evaluate   kNN and linear probes of a run's encoder and baselines (writes DIR/eval.json, .md):
             ssl-jax evaluate --workdir DIR [--label_fractions=0.01,0.1,1.0]
  embed      a run's frozen features for a data source, in order (labels beside, if any):
             ssl-jax embed --workdir DIR --data SOURCE --out features.npy [--split=train]
             (for an image folder also OUT_files.txt, the file of each row; a file that
             cannot be decoded is an error unless --skip_unreadable)

Run `ssl-jax COMMAND --help` for a command's flags.
"""


def _pretrain_flags(argv: list[str]) -> flags.FlagValues:
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config",
        None,
        "Recipe file defining get_config() (e.g. configs/simclr_fashion_mnist.py).",
        flag_values=fv,
        sys_argv=argv,  # config_flags finds the --config.FIELD overrides here, not in sys.argv
    )
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
        # ml_collections, applying the overrides: AttributeError for a misspelt leaf
        # (--config.model.encodr), KeyError for a misspelt group (--config.modle.encoder),
        # TypeError for a leaf used as a group (--config.model.encoder.x). Name the override and
        # the closest schema field; anything else (e.g. a bug in the recipe file) is not ours.
        bad = _unknown_override(argv)
        if bad is not None:
            raise SystemExit(f"ssl-jax: {_unknown_field_message(bad)}") from None
        if not isinstance(e, AttributeError):
            raise
        msg = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'")
        raise SystemExit(f"ssl-jax: unknown config field in an override: {msg}") from None
    except flags.UnrecognizedFlagError as e:
        name = getattr(e, "flagname", "") or ""
        if name.startswith("config."):
            raise SystemExit(f"ssl-jax: {_unknown_field_message(name[len('config.') :])}") from None
        raise SystemExit(f"ssl-jax: {e}") from None
    except (flags.Error, FileNotFoundError, OSError) as e:
        raise SystemExit(f"ssl-jax: {e}") from None


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


def pretrain(argv: list[str], *, extra_hooks: Sequence[Any] = ()) -> int:
    """`ssl-jax pretrain`: parse flags and config, train, then evaluate unless turned off.
    ``extra_hooks`` go to :func:`ssl_jax.train.train` (tests install fault injection so)."""
    argv = ["ssl-jax pretrain", *argv]
    fv = _pretrain_flags(argv)
    if "--help" in argv or "-h" in argv:
        from ssl_jax.config import describe_fields

        print("usage: ssl-jax pretrain --config FILE --workdir DIR [--config.FIELD=VALUE ...]\n")
        print(fv.module_help(__name__))
        print(
            "\nconfig fields, each settable as --config.FIELD=VALUE (the defaults of "
            "ssl_jax/config.py; a recipe changes some):\n" + describe_fields()
        )
        return 0
    config = _parse(fv, argv)
    if config is None or fv.workdir is None:
        raise SystemExit("ssl-jax pretrain: both --config FILE and --workdir DIR are required.")

    from ssl_jax import parallel

    parallel.initialize_distributed(fv.coordinator_address, fv.num_processes, fv.process_id)
    import jax

    from ssl_jax import host_memory, logs, train

    if jax.process_index() == 0:
        logs.console(host_memory.status())

    try:
        train.train(config, fv.workdir, extra_hooks=extra_hooks)
    except (ValueError, FileNotFoundError, train.NonFiniteLossError) as e:
        raise SystemExit(f"ssl-jax pretrain: {e}") from None
    if config.eval_at_end:
        import jax

        if jax.process_count() > 1:
            if jax.process_index() == 0:
                print(
                    f"Multi-process evaluation is not supported yet: run `ssl-jax evaluate "
                    f"--workdir {fv.workdir}` in one process."
                )
            return 0
        from ssl_jax.evaluation import evaluate as run_evaluation

        try:
            run_evaluation(fv.workdir, finetune_fractions=config.eval_finetune_fractions)
        except (ValueError, FileNotFoundError) as e:
            raise SystemExit(
                f"ssl-jax pretrain: training finished; evaluation failed: {e}"
            ) from None
    return 0


def _evaluate_flags() -> flags.FlagValues:
    fv = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "Run directory written by `pretrain`.", flag_values=fv)
    flags.DEFINE_list(
        "label_fractions",
        ["0.01", "0.1", "1.0"],
        "Fractions of the training labels, each in (0, 1].",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "seed", 0, "Seed of the labelled subsets and validation splits.", flag_values=fv
    )
    flags.DEFINE_integer(
        "step", None, "Checkpoint step to evaluate (default: the latest).", flag_values=fv
    )
    flags.DEFINE_string("test_split", "test", "The split that is scored.", flag_values=fv)
    flags.DEFINE_integer("batch_size", 512, "Images per feature-extraction batch.", flag_values=fv)
    flags.DEFINE_list(
        "representations",
        None,
        "Any of ssl,random_init,raw_pixels,supervised (default: all).",
        flag_values=fv,
    )
    flags.DEFINE_list(
        "protocols",
        None,
        "Any of knn,linear,finetune (default: all); knn,linear skips the slow fine-tuning.",
        flag_values=fv,
    )
    flags.DEFINE_list(
        "finetune_fractions",
        None,
        "Label fractions to fine-tune on, each one of --label_fractions (default: those < 1).",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "finetune_steps",
        None,
        "Updates per fine-tuning run (default: 40 epochs of the subset, within [50, 200]).",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "finetune_batch_size", None, "Fine-tuning batch size (default: 256).", flag_values=fv
    )
    flags.DEFINE_float(
        "finetune_lr", None, "Peak AdamW lr of the linear head (default: 3e-3).", flag_values=fv
    )
    flags.DEFINE_float(
        "finetune_encoder_lr",
        None,
        "Peak AdamW lr of the encoder when fine-tuning (default: 3e-3).",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "plots",
        True,
        "Write the PNG pictures (t-SNE/PCA maps, training curves, label efficiency); --noplots "
        "skips them.",
        flag_values=fv,
    )
    return fv


def _parse_command(name: str, fv: flags.FlagValues, argv: list[str], usage: str) -> bool:
    """Parse a command's flags into ``fv``; False when it printed its help instead. A bad flag
    exits with a message naming the command."""
    argv = [f"ssl-jax {name}", *argv]
    if "--help" in argv or "-h" in argv:
        print(usage + "\n")
        print(fv.module_help(__name__))
        return False
    try:
        fv(argv)
    except flags.Error as e:
        raise SystemExit(f"ssl-jax {name}: {e}") from None
    return True


def evaluate(argv: list[str]) -> int:
    """`ssl-jax evaluate`: kNN and linear probes and fine-tuning of a run, and its baselines."""
    fv = _evaluate_flags()
    usage = "usage: ssl-jax evaluate --workdir DIR [--label_fractions=0.01,0.1,1.0]"
    if not _parse_command("evaluate", fv, argv, usage):
        return 0
    if fv.workdir is None:
        raise SystemExit("ssl-jax evaluate: --workdir DIR (a pretraining run) is required.")
    fractions = {}
    for name in ("label_fractions", "finetune_fractions"):
        if fv[name].value is None:
            continue
        try:
            fractions[name] = [float(f) for f in fv[name].value]
        except ValueError:
            raise SystemExit(
                f"ssl-jax evaluate: --{name} must be numbers in (0, 1], got "
                f"{','.join(fv[name].value)}."
            ) from None
    # Only the flags given: the library's defaults stay in one place.
    optional = {
        name: fv[name].value
        for name in (
            "representations",
            "protocols",
            "finetune_steps",
            "finetune_batch_size",
            "finetune_lr",
            "finetune_encoder_lr",
        )
        if fv[name].value is not None
    }

    from ssl_jax.evaluation import evaluate as run_evaluation

    try:
        run_evaluation(
            fv.workdir,
            seed=fv.seed,
            step=fv.step,
            test_split=fv.test_split,
            batch_size=fv.batch_size,
            plots=fv.plots,
            **fractions,
            **optional,
        )
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        raise SystemExit(f"ssl-jax evaluate: {e}") from None
    return 0


def _embed_flags() -> flags.FlagValues:
    fv = flags.FlagValues()
    flags.DEFINE_string(
        "workdir", None, "A pretraining run (config.json + checkpoints/).", flag_values=fv
    )
    flags.DEFINE_string(
        "data",
        None,
        "Images to embed: fashion_mnist | tfds:NAME | folder:/path | synthetic.",
        flag_values=fv,
    )
    flags.DEFINE_string("out", None, "Output .npy file: float32 features [N, F].", flag_values=fv)
    flags.DEFINE_string("split", "train", "Split of the data source.", flag_values=fv)
    flags.DEFINE_string(
        "data_dir", None, "TFDS data dir (tfds: sources; default: the run's).", flag_values=fv
    )
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).", flag_values=fv)
    flags.DEFINE_integer("batch_size", 512, "Images per batch.", flag_values=fv)
    flags.DEFINE_bool(
        "skip_unreadable",
        False,
        "folder: data: leave out the image files that cannot be decoded (they are listed) "
        "instead of stopping; OUT_files.txt names the file of every row.",
        flag_values=fv,
    )
    return fv


def _embed_config(config, spec: str, data_dir: str | None):
    """The run's config reading ``spec`` as the run read its own data: the same channels and
    host resize for a folder (the encoder resizes to image_size on the device, so embed's
    features equal evaluate's), the run's data_dir unless ``data_dir`` is given, and a folder's
    unreadable file an error (row i is file i)."""
    config = config.copy_and_resolve_references()
    config.dataset = spec
    config.data_dir = data_dir or config.data_dir
    config.data_in_memory = False
    is_folder = spec.startswith("folder:")
    with config.ignore_type():
        config.data_image_size = (
            (config.data_image_size or config.image_size) if is_folder else None
        )
    return config


def embed(argv: list[str]) -> int:
    """`ssl-jax embed`: a run's frozen features for every image of a data source, in order."""
    fv = _embed_flags()
    usage = "usage: ssl-jax embed --workdir DIR --data SOURCE --out features.npy [--split=train]"
    if not _parse_command("embed", fv, argv, usage):
        return 0
    missing = [f"--{n}" for n in ("workdir", "data", "out") if fv[n].value is None]
    if missing:
        raise SystemExit(f"ssl-jax embed: {', '.join(missing)} required.\n{usage}")

    import os

    import numpy as np

    from ssl_jax import data, logs
    from ssl_jax.evaluation import extract_features, load_encoder

    out = fv.out if fv.out.endswith(".npy") else fv.out + ".npy"
    stem = out[: -len(".npy")]
    is_folder = fv.data.startswith("folder:")
    skipped: list[str] = []
    listing = ""
    try:
        encoder = load_encoder(fv.workdir, step=fv.step)
        source = data.source_from_config(
            _embed_config(encoder.config, fv.data, fv.data_dir), fv.split, unreadable="raise"
        )
        channels = int(encoder.config.image_channels)
        if source.image_shape[-1] != channels:
            raise ValueError(
                f"{source.name} has {source.image_shape[-1]}-channel images but the encoder "
                f"was trained on {channels}."
            )

        def run(src):
            return extract_features(
                src, {"f": encoder}, batch_size=fv.batch_size, description="embedding"
            )

        try:
            feats, labels = run(source)
        except data.UnreadableImageError as e:
            logs.console(f"{e.path} cannot be decoded; checking every file of {source.root} ...")
            skipped = source.find_corrupt() or [e.path]
            listing = ", ".join(skipped[:10]) + (", ..." if len(skipped) > 10 else "")
            if not fv.skip_unreadable:
                raise ValueError(
                    f"{len(skipped)} of the {len(source):,} image files in {source.root} cannot "
                    f"be decoded: {listing}. Remove or repair them, or pass --skip_unreadable "
                    f"to embed the others ({stem}_files.txt then names the file of every row)."
                ) from None
            source = source.without(skipped)
            feats, labels = run(source)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"ssl-jax embed: {e}") from None
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    np.save(out, feats["f"])
    written = [f"{out} (float32 {feats['f'].shape})"]
    if (labels >= 0).all():
        labels_out = stem + "_labels.npy"
        np.save(labels_out, labels)
        written.append(f"{labels_out} (int32 [{len(labels)}])")
    if is_folder:  # which file each row is (paths relative to the folder read)
        files_out = stem + "_files.txt"
        with open(files_out, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.writelines(path + "\n" for path in source.files)
        written.append(f"{files_out} (paths relative to {source.root})")
    logs.console(
        f"embedded {len(labels):,} images of {source.name} with {encoder.workdir} "
        f"(step {encoder.step}): " + ", ".join(written)
    )
    if skipped:
        logs.console(f"left out {len(skipped)} unreadable image file(s): {listing}")
    return 0


COMMANDS = {"pretrain": pretrain, "evaluate": evaluate, "embed": embed}


def main(argv: list[str] | None = None, *, extra_hooks: Sequence[Any] = ()) -> int:
    """The `ssl-jax` entry point; returns the process exit status. ``extra_hooks``: training
    hooks for `pretrain` (:class:`ssl_jax.hooks.Hook`), for callers that embed the command."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"ssl-jax: unknown command {command!r}.\n\n{USAGE}", file=sys.stderr)
        return 2
    from ssl_jax import host_memory

    try:
        host_memory.configure()  # before JAX starts its backend (see host_memory)
    except ValueError as e:
        raise SystemExit(f"ssl-jax: {e}") from None
    try:
        if command == "pretrain":
            return pretrain(rest, extra_hooks=extra_hooks)
        return COMMANDS[command](rest)
    except KeyboardInterrupt as e:
        # A first Ctrl-C, SIGTERM or SIGHUP in pretraining saves a checkpoint of the last completed
        # step (train.TrainingInterrupted); a second one stops at once, from the last checkpoint.
        # The exit status is the shell's for the signal: 128 + its number (Ctrl-C: 130).
        step = getattr(e, "step", None)
        if step is not None:
            msg = f"interrupted after step {step}, which is checkpointed. Run the same command "
            msg += "again to resume."
        elif command == "pretrain":
            msg = "interrupted. Run the same command again to resume from the last checkpoint."
        else:
            msg = "interrupted."
        print(f"ssl-jax: {msg}", file=sys.stderr)
        return 128 + getattr(e, "signum", 2)


if __name__ == "__main__":
    sys.exit(main())
