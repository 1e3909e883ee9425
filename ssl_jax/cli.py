"""The ``ssl-jax`` command: parse the command line, then call the library. Nothing else.

    ssl-jax pretrain --config configs/simclr_fashion_mnist.py --workdir runs/simclr \
        [--config.total_steps=2000 --config.batch_size=512 ...]
    ssl-jax evaluate --workdir runs/simclr [--label_fractions=0.01,0.1,1.0]

Multi-process (one process per host, or several on one machine for testing):

    ssl-jax pretrain ... --coordinator_address=10.0.0.1:1234 --num_processes=2 --process_id=0
"""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

USAGE = """usage: ssl-jax COMMAND [flags]

commands:
  pretrain   self-supervised pretraining:
             ssl-jax pretrain --config configs/<recipe>.py --workdir DIR [--config.FIELD=VALUE ...]
  evaluate   kNN and linear probes of a run's encoder and baselines (writes DIR/eval.json, .md):
             ssl-jax evaluate --workdir DIR [--label_fractions=0.01,0.1,1.0]

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
    except AttributeError as e:  # ml_collections: an override names a field the recipe lacks
        msg = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'")
        raise SystemExit(f"ssl-jax: unknown config field in an override: {msg}") from None
    except flags.UnrecognizedFlagError as e:
        name = getattr(e, "flagname", "") or ""
        if name.startswith("config."):
            raise SystemExit(f"ssl-jax: {_unknown_field_message(name[len('config.') :])}") from None
        raise SystemExit(f"ssl-jax: {e}") from None
    except (flags.Error, FileNotFoundError, OSError) as e:
        raise SystemExit(f"ssl-jax: {e}") from None


def _unknown_field_message(field: str) -> str:
    """Name the unknown config field and the closest known one."""
    from ssl_jax.config import closest_field

    close = closest_field(field)
    hint = f" (did you mean --config.{close}?)" if close else ""
    return f"unknown config field '{field}'{hint}. See ssl_jax/config.py for every field."


def pretrain(argv: list[str]) -> int:
    """`ssl-jax pretrain`: parse flags and config, train, then evaluate unless turned off."""
    argv = ["ssl-jax pretrain", *argv]
    fv = _pretrain_flags(argv)
    if "--help" in argv or "-h" in argv:
        print("usage: ssl-jax pretrain --config FILE --workdir DIR [--config.FIELD=VALUE ...]\n")
        print(fv.module_help(__name__))
        return 0
    config = _parse(fv, argv)
    if config is None or fv.workdir is None:
        raise SystemExit("ssl-jax pretrain: both --config FILE and --workdir DIR are required.")

    from ssl_jax import parallel

    parallel.initialize_distributed(fv.coordinator_address, fv.num_processes, fv.process_id)
    from ssl_jax import train

    try:
        train.train(config, fv.workdir)
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
            run_evaluation(fv.workdir)
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
    return fv


def evaluate(argv: list[str]) -> int:
    """`ssl-jax evaluate`: kNN and linear probes of a run and its baselines."""
    argv = ["ssl-jax evaluate", *argv]
    fv = _evaluate_flags()
    if "--help" in argv or "-h" in argv:
        print("usage: ssl-jax evaluate --workdir DIR [--label_fractions=0.01,0.1,1.0]\n")
        print(fv.module_help(__name__))
        return 0
    try:
        fv(argv)
    except flags.Error as e:
        raise SystemExit(f"ssl-jax evaluate: {e}") from None
    if fv.workdir is None:
        raise SystemExit("ssl-jax evaluate: --workdir DIR (a pretraining run) is required.")
    try:
        fractions = [float(f) for f in fv.label_fractions]
    except ValueError:
        raise SystemExit(
            f"ssl-jax evaluate: --label_fractions must be numbers in (0, 1], got "
            f"{','.join(fv.label_fractions)}."
        ) from None

    from ssl_jax.evaluation import evaluate as run_evaluation

    try:
        run_evaluation(
            fv.workdir,
            label_fractions=fractions,
            seed=fv.seed,
            step=fv.step,
            test_split=fv.test_split,
            batch_size=fv.batch_size,
        )
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"ssl-jax evaluate: {e}") from None
    return 0


COMMANDS = {"pretrain": pretrain, "evaluate": evaluate}


def main(argv: list[str] | None = None) -> int:
    """The `ssl-jax` entry point; returns the process exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"ssl-jax: unknown command {command!r}.\n\n{USAGE}", file=sys.stderr)
        return 2
    return COMMANDS[command](rest)


if __name__ == "__main__":
    sys.exit(main())
