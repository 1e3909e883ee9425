"""The ``ssl-jax`` command: parse the command line, then call the library. Nothing else.

    ssl-jax pretrain --config simclr_fashion_mnist --workdir runs/simclr \
        [--config.total_steps=2000 --config.batch_size=512 ...]
    ssl-jax recipes [simclr_fashion_mnist:quick]
    ssl-jax evaluate --workdir runs/simclr [--label_fractions=0.01,0.1,1.0]
    ssl-jax embed --workdir runs/simclr --data folder:/my/images --out features.npy

Multi-process (one process per host, or several on one machine for testing):

    ssl-jax pretrain ... --coordinator_address=10.0.0.1:1234 --num_processes=2 --process_id=0
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Sequence
from typing import Any

from absl import flags

USAGE = """usage: ssl-jax COMMAND [flags]

commands:
  pretrain   self-supervised pretraining from a recipe (a name, or a .py file):
             ssl-jax pretrain --config RECIPE[:VARIANT] --workdir DIR [--config.FIELD=VALUE ...]
  recipes    the recipes with their variants; one recipe's settings:
             ssl-jax recipes [RECIPE[:VARIANT]]
  evaluate   kNN and linear probes of a run's encoder and baselines (writes DIR/eval.json, .md):
             ssl-jax evaluate --workdir DIR [--label_fractions=0.01,0.1,1.0]
  embed      a run's frozen features for a data source, in order (labels beside, if any):
             ssl-jax embed --workdir DIR --data SOURCE --out features.npy [--split=train]
             (for an image folder also OUT_files.jsonl, the file of each row; a file that
             cannot be decoded is an error unless --skip_unreadable)
  export     a run's encoder alone, to hand on (safetensors + encoder.json; DIR/exported/):
             ssl-jax export --workdir DIR [--out OUT_DIR] [--step N] [--format torch]

Run `ssl-jax COMMAND --help` for a command's flags; `ssl-jax --version` prints the version.
--verbose (with any command) also prints the host settings that matter for speed.
"""


def pretrain(argv: list[str], *, extra_hooks: Sequence[Any] = ()) -> int:
    """`ssl-jax pretrain`: parse flags and config, train, then evaluate unless turned off.
    ``extra_hooks`` go to :func:`ssl_jax.train.train` (tests install fault injection so)."""
    from ssl_jax import pretrain_args

    parsed = pretrain_args.parse(argv)
    if parsed is None:  # it printed the help
        return 0
    fv, config = parsed

    from ssl_jax import parallel

    parallel.initialize_distributed(fv.coordinator_address, fv.num_processes, fv.process_id)
    import jax

    from ssl_jax import host_memory, logs, train

    if jax.process_index() == 0:
        logs.detail(host_memory.status())  # shown with --verbose; always in train.log

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
            run_evaluation(  # a folder without labels or a test split: one line, skipped
                fv.workdir, finetune_fractions=config.eval_finetune_fractions, unevaluable="skip"
            )
        except (ValueError, FileNotFoundError) as e:
            raise SystemExit(
                f"ssl-jax pretrain: training finished; evaluation failed: {e}"
            ) from None
    elif jax.process_index() == 0:
        logs.console(
            f"evaluation skipped (config.eval_at_end=False): `ssl-jax evaluate --workdir "
            f"{fv.workdir}` evaluates the run"
        )
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
    flags.DEFINE_bool("write", True, "--nowrite: print the results only.", flag_values=fv)
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
            write=fv.write,
            plots=fv.plots,
            **fractions,
            **optional,
        )
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        denied = getattr(e, "errno", None) in (errno.EACCES, errno.EPERM, errno.EROFS)
        hint = " Or pass --nowrite to print the results only." if denied else ""
        raise SystemExit(f"ssl-jax evaluate: {e}{hint}") from None
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
        "instead of stopping; OUT_files.jsonl names the file of every row (one JSON string "
        "per line, safe for any file name).",
        flag_values=fv,
    )
    return fv


def _check_writable_dir(directory: str) -> None:
    """Creates `directory` and checks that a file can be written there (SystemExit naming it)."""
    import os
    import tempfile

    try:
        os.makedirs(directory, exist_ok=True)
        tempfile.TemporaryFile(dir=directory).close()
    except OSError as e:
        raise SystemExit(
            f"ssl-jax embed: cannot write the --out files in {directory!r} "
            f"({e.strerror or e}): choose another --out."
        ) from None


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

    from ssl_jax import data, logs, outputs
    from ssl_jax.evaluation import extract_features, load_encoder
    from ssl_jax.run import with_data

    out = fv.out if fv.out.endswith(".npy") else fv.out + ".npy"
    stem = out[: -len(".npy")]
    _check_writable_dir(os.path.dirname(os.path.abspath(out)))  # before the work, not after
    is_folder = fv.data.startswith("folder:")
    skipped: list[str] = []
    listing = ""
    try:
        encoder = load_encoder(fv.workdir, step=fv.step)
        source = data.source_from_config(
            with_data(encoder.config, fv.data, fv.data_dir), fv.split, unreadable="raise"
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
                    f"to embed the others ({stem}_files.jsonl then names the file of every row)."
                ) from None
            source = source.without(skipped)
            feats, labels = run(source)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"ssl-jax embed: {e}") from None
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    outputs.write_npy(out, feats["f"])  # a link there is replaced, never written through
    written = [f"{out} (float32 {feats['f'].shape})"]
    if (labels >= 0).all():
        labels_out = stem + "_labels.npy"
        outputs.write_npy(labels_out, labels)
        written.append(f"{labels_out} (int32 [{len(labels)}])")
    if is_folder:  # which file each row is: one JSON string per line, so any name is one line
        import json

        files_out = stem + "_files.jsonl"
        # ensure_ascii: non-UTF-8 names too
        outputs.write_text(files_out, "".join(json.dumps(path) + "\n" for path in source.files))
        written.append(f"{files_out} (paths relative to {source.root}, JSON lines)")
    logs.console(
        f"embedded {len(labels):,} images of {source.name} with {encoder.workdir} "
        f"(step {encoder.step}): " + ", ".join(written)
    )
    if skipped:
        logs.console(f"left out {len(skipped)} unreadable image file(s): {listing}")
    return 0


def recipes(argv: list[str]) -> int:
    """`ssl-jax recipes [RECIPE[:VARIANT]]`: every recipe with its variants and description, or
    the fields one recipe sets."""
    from ssl_jax import recipes as recipes_lib

    if any(a in ("-h", "--help") for a in argv):
        print("usage: ssl-jax recipes [RECIPE[:VARIANT]]")
        return 0
    if len(argv) > 1 or (argv and argv[0].startswith("-")):
        raise SystemExit("ssl-jax recipes: give at most one recipe, e.g. simclr_fashion_mnist.")
    try:
        text = recipes_lib.show(argv[0]) if argv else recipes_lib.listing()
    except recipes_lib.RecipeError as e:
        raise SystemExit(f"ssl-jax recipes: {e}") from None
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `ssl-jax recipes | head`: the reader has what it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _export_flags() -> flags.FlagValues:
    fv = flags.FlagValues()
    flags.DEFINE_string(
        "workdir", None, "A pretraining run (config.json + checkpoints/).", flag_values=fv
    )
    flags.DEFINE_string(
        "out", None, "Output directory (default: WORKDIR/exported).", flag_values=fv
    )
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).", flag_values=fv)
    flags.DEFINE_list(
        "format",
        [],
        "Extra formats beside encoder.safetensors: torch (torchvision's ResNet / timm's ViT "
        "names, torch.safetensors).",
        flag_values=fv,
    )
    return fv


def export(argv: list[str]) -> int:
    """`ssl-jax export`: a run's encoder alone (safetensors + encoder.json), to hand on."""
    fv = _export_flags()
    usage = "usage: ssl-jax export --workdir DIR [--out OUT_DIR] [--step N] [--format torch]"
    if not _parse_command("export", fv, argv, usage):
        return 0
    if fv.workdir is None:
        raise SystemExit(f"ssl-jax export: --workdir DIR (a pretraining run) is required.\n{usage}")

    import json
    import os

    from ssl_jax import logs, outputs
    from ssl_jax.export import export_encoder

    try:
        out = export_encoder(fv.workdir, fv.out, step=fv.step, formats=fv.format)
    except (ValueError, OSError, TypeError) as e:
        if isinstance(e, OSError) and not isinstance(e, outputs.OutputError) and e.filename:
            e = outputs.error(os.fspath(e.filename), e)  # names the place and the fix
        raise SystemExit(f"ssl-jax export: {e}") from None
    with open(os.path.join(out, "encoder.json"), encoding="utf-8") as f:
        meta = json.load(f)
    files = ", ".join(["encoder.json", *meta["files"].values()])
    logs.console(
        f"exported the {meta['model']['encoder']} encoder of step {meta['source']['step']} "
        f"({meta['features']['dim']} features) to {out}: {files}. Load it with "
        f"ssl_jax.load_encoder({out!r})."
    )
    return 0


COMMANDS = {
    "pretrain": pretrain,
    "evaluate": evaluate,
    "embed": embed,
    "recipes": recipes,
    "export": export,
}


def main(argv: list[str] | None = None, *, extra_hooks: Sequence[Any] = ()) -> int:
    """The `ssl-jax` entry point; returns the process exit status. ``extra_hooks``: training
    hooks for `pretrain` (:class:`ssl_jax.hooks.Hook`), for callers that embed the command."""
    argv = sys.argv[1:] if argv is None else argv
    verbose = "--verbose" in argv  # anywhere on the line: logs.detail lines on the console
    argv = [arg for arg in argv if arg != "--verbose"]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] in ("--version", "version"):
        from ssl_jax import __version__

        print(f"ssl-jax {__version__}")
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
    from ssl_jax import logs, outputs

    logs.set_verbose(verbose)
    logs.clear_pending()  # the run's log starts with this command's lines
    try:
        if command == "pretrain":
            return pretrain(rest, extra_hooks=extra_hooks)
        return COMMANDS[command](rest)
    except outputs.OutputError as e:  # a file that cannot be written: disk full, a planted link
        raise SystemExit(f"ssl-jax {command}: {e}") from None
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
