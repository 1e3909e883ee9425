"""A run's work directory, and the pieces that training, evaluation and tools share about it.

    run = Run("runs/simclr")
    run.config                      # config.json, read (and migrated from older field names)
    run.checkpoints_dir, run.metrics_path, run.eval_json, run.figure("label_efficiency")
    state = run.restore_state()     # the latest checkpoint into a fresh method state
                                    # (ssl_jax.load_encoder keeps just its encoder)

The work directory holds ``config.json``, ``checkpoints/<step>/``, ``metrics.jsonl``,
``tensorboard/``, ``eval.json`` / ``eval.md`` and the figures (``*.png``); this module names them
all, so the layout lives in one place.

:func:`jit_train_step` is THE jitted train step: ``train()`` runs it, the HLO tests compile it
and the profiling tools time it.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp

from ssl_jax import parallel
from ssl_jax import saved_config as saved
from ssl_jax.methods import batch_keys, get_method
from ssl_jax.models import stochastic_depth


@dataclasses.dataclass(frozen=True)
class Run:
    """The files of one run directory (an absolute path)."""

    workdir: str

    def __post_init__(self):
        if not str(self.workdir).strip():
            raise ValueError(
                "The work directory is empty (--workdir= with an unset variable?): give the "
                "run's directory."
            )
        object.__setattr__(self, "workdir", os.path.abspath(self.workdir))
        if os.path.exists(self.workdir) and not os.path.isdir(self.workdir):
            raise ValueError(
                f"The work directory {self.workdir} is a file: choose a directory (it is made if "
                "missing)."
            )

    @property
    def config_path(self) -> str:
        return os.path.join(self.workdir, "config.json")

    @property
    def checkpoints_dir(self) -> str:
        return os.path.join(self.workdir, "checkpoints")

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.workdir, "metrics.jsonl")

    @property
    def tensorboard_dir(self) -> str:
        return os.path.join(self.workdir, "tensorboard")

    @property
    def eval_json(self) -> str:
        return os.path.join(self.workdir, "eval.json")

    @property
    def eval_md(self) -> str:
        return os.path.join(self.workdir, "eval.md")

    def figure(self, name: str) -> str:
        """A figure's path: ``figure('training_curves')`` -> ``WORKDIR/training_curves.png``."""
        return os.path.join(self.workdir, f"{name}.png")

    def saved_config(self) -> dict | None:
        """config.json as saved (a dict, unchecked), or None when missing or unreadable."""
        return saved.read_saved(self.config_path)

    @property
    def config(self) -> Any:
        """The run's config (``config.json``; older field names migrated, fields added since
        at their defaults), checked like a command-line config: a ValueError naming the file
        and the field when it is damaged or invalid (:mod:`ssl_jax.saved_config`), and
        FileNotFoundError when this is no run directory."""
        try:
            return saved.load(self.config_path)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{self.workdir} is not a run directory: it has no config.json "
                "(ssl-jax pretrain --workdir DIR writes one)."
            ) from None
        except OSError as e:
            raise ValueError(
                f"Cannot read {self.config_path} ({e.strerror or e}): check its permissions, or "
                "choose another run directory."
            ) from None

    def checkpointer(self, **kwargs: Any) -> Any:
        """An Orbax checkpointer of ``checkpoints/`` (``max_to_keep``, ``async_save``)."""
        # Imported here: checkpoint.py needs grain, and the jitted step below must not (the
        # benchmarks compile it where only jax, flax, optax and orbax are installed).
        from ssl_jax.checkpoint import Checkpointer

        return Checkpointer(self.checkpoints_dir, **kwargs)

    def restore_state(self, step: int | str | None = None, *, config: Any = None) -> Any:
        """The method's train state of checkpoint ``step`` (default: the newest intact one) on
        the default device, with the step at :attr:`TrainState.step`. FileNotFoundError names
        what is missing (also when every step is damaged); ValueError for a damaged ``step``
        or a checkpoint that does not fit the config; TypeError for a step that is not an int."""
        if step is not None:
            step = _as_step(step)
        config = self.config if config is None else config
        if not os.path.isdir(self.checkpoints_dir):
            raise FileNotFoundError(f"The run in {self.workdir} has no checkpoints/ directory.")
        # Read-only: keep every checkpoint (None) and write nothing in the background.
        ckpt = self.checkpointer(max_to_keep=None, async_save=False)
        try:
            steps = ckpt.all_steps()
            if not steps:
                raise FileNotFoundError(
                    f"The run in {self.workdir} has no complete checkpoint yet."
                )
            if step is not None and step not in steps:
                raise FileNotFoundError(
                    f"{self.checkpoints_dir} has no checkpoint {step}; it has {steps}."
                )
            device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
            # A damaged or incomplete newest step falls back to the newest intact one (a
            # warning on stderr names both); an explicit step must itself be intact.
            _, state, _ = ckpt.restore_intact(
                abstract_state(config, device), step, warn=_warn_stderr
            )
        finally:
            ckpt.close()
        return state


def with_data(config: Any, spec: str, data_dir: str | None = None) -> Any:
    """A copy of the run's ``config`` reading ``spec`` (embed's ``--data``) as the run read its
    own data: the same channels and host resize for a folder (the encoder resizes to image_size
    on the device, so embed's features equal evaluate's), the run's data_dir unless
    ``data_dir`` is given, and nothing read into memory."""
    config = config.copy_and_resolve_references()
    config.dataset = spec
    config.data_dir = data_dir or config.data_dir
    config.data_in_memory = False
    with config.ignore_type():
        config.data_image_size = (
            (config.data_image_size or config.image_size) if spec.startswith("folder:") else None
        )
    return config


def evaluation_data(config: Any, workdir: str, *, test_split: str = "test") -> Any:
    """``config`` (the saved config of the run or export in ``workdir``), once its data may be
    read by an evaluation scoring ``test_split``.

    A run directory may come from someone else, and its config may name any folder, even
    ``folder:/`` (a scan of the whole file system). So a ``folder:`` dataset is read only when it
    is laid out as evaluation needs it anyway, ``DIR/<train_split>/`` and ``DIR/<test_split>/``
    (checked with two ``stat`` calls, before anything is scanned), and it is announced on the
    console before it is read. Otherwise a one-line ValueError names the folder and the file
    that names it. A run trained here on a train/test folder passes without a flag."""
    if not config.dataset.startswith("folder:"):
        return config
    path = os.path.abspath(os.path.expanduser(config.dataset[len("folder:") :]))
    origin = os.path.join(workdir, "config.json")
    if not os.path.isfile(origin):  # an exported encoder keeps the config in encoder.json
        origin = os.path.join(workdir, "encoder.json")
    splits = list(dict.fromkeys([config.train_split, test_split]))
    missing = [s for s in splits[::-1] if not os.path.isdir(os.path.join(path, s))]
    if missing:
        if os.path.isdir(path):  # the test split first: without it there is nothing to score
            what = f"has no '{missing[0]}/' sub-folder"
        else:
            what = "is not a directory here"
        layout = " and ".join(f"{os.path.join(path, s)}/<class>/..." for s in splits)
        raise ValueError(
            f"{origin} names the data folder:{path}, which {what}: nothing was read. Evaluation "
            f"reads an image folder laid out as {layout}; put the run's images there, or "
            'correct "dataset" in that file.'
        )
    from ssl_jax.console import console  # (ssl_jax.logs imports this module)

    console(f"reading the run's data folder:{path} (named in {origin})")
    return config


def _warn_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _as_step(step: Any) -> int:
    """A checkpoint step: an int (NumPy ints included) or a string of one; not bool or float."""
    if isinstance(step, str):
        try:
            return int(step.strip())
        except ValueError:
            pass
    elif not isinstance(step, bool):
        try:
            return operator.index(step)
        except TypeError:
            pass
    raise TypeError(f"step must be an int checkpoint step (e.g. step=1000); got {step!r}.")


def abstract_state(config: Any, sharding: Any) -> Any:
    """The method's train state as ShapeDtypeStructs placed by ``sharding`` (nothing is
    allocated): the target of a restore, or the input of ``jit_train_step(...).lower``."""
    init = functools.partial(get_method(config.method).init_state, config)
    shapes = jax.eval_shape(init, jax.random.key(config.seed))
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def jit_train_step(method: Any, mesh: jax.sharding.Mesh) -> Any:
    """``method.train_step`` jitted for data parallelism on ``mesh``: state and key replicated,
    batch sharded on ``'data'``, outputs replicated, state donated. ``train()`` runs this."""
    repl = parallel.replicated(mesh)
    return jax.jit(
        with_drop_path_key(method.train_step),
        in_shardings=(repl, parallel.data_sharding(mesh), repl),
        out_shardings=(repl, repl),
        donate_argnums=(0,),
    )


DROP_PATH_STREAM = 0x5D0D  # folded into the step key: the drop-path masks' own stream


@functools.cache  # one wrapper per step function: jax.jit's caches see the same function
def with_drop_path_key(train_step: Any) -> Any:
    """``train_step`` run inside :func:`ssl_jax.models.stochastic_depth.key_scope` with a key
    of its own for every step: the randomness of drop-path layers in train mode."""

    @functools.wraps(train_step)
    def step(state: Any, batch: dict, key: jax.Array) -> Any:
        drop_key = jax.random.fold_in(jax.random.fold_in(key, state.step), DROP_PATH_STREAM)
        with stochastic_depth.key_scope(drop_key):
            return train_step(state, batch, key)

    return step


def abstract_step_inputs(
    config: Any, mesh: jax.sharding.Mesh, source_size: int | None = None
) -> tuple[Any, dict[str, jax.ShapeDtypeStruct], jax.ShapeDtypeStruct]:
    """(state, batch, key) as ShapeDtypeStructs with the train loop's shardings, for
    ``jit_train_step(...).lower``: the step compiles at any batch size without allocating. The
    batch is ``uint8 [config.batch_size, S, S, config.image_channels]`` with ``S = source_size``
    (the dataset's image side; default ``config.image_size``), plus ``label: int32
    [config.batch_size]`` for a method that reads labels."""
    repl = parallel.replicated(mesh)
    state = abstract_state(config, repl)
    side = source_size or config.image_size
    image = (config.batch_size, side, side, config.image_channels)
    data = parallel.data_sharding(mesh)
    batch = {"image": jax.ShapeDtypeStruct(image, jnp.uint8, sharding=data)}
    if "label" in batch_keys(get_method(config.method)):
        batch["label"] = jax.ShapeDtypeStruct(image[:1], jnp.int32, sharding=data)
    key = jax.eval_shape(lambda: jax.random.key(0))
    return state, batch, jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=repl)
