"""Fault injection for the resume tests: training hooks the tests install (the library reads no
test machinery from the environment).

    python tests/faults.py --kill-before-step 7 pretrain --config ... --workdir ...

runs ``ssl-jax`` with :class:`KillBeforeStep` installed.
"""

import os
import signal
import sys

from ssl_jax.hooks import Hook


class KillBeforeStep(Hook):
    """SIGKILL this process before ``step``, once every checkpoint in flight is on disk (a kill
    "after a checkpoint")."""

    def __init__(self, step: int):
        self.step = step

    def before_step(self, loop, step):
        if step == self.step:
            loop.ckpt.wait()
            os.kill(os.getpid(), signal.SIGKILL)


class SigintBeforeStep(Hook):
    """Send this process a SIGINT (Ctrl-C), or ``signum``, before ``step``."""

    def __init__(self, step: int, signum: int = signal.SIGINT):
        self.step, self.signum = step, signum

    def before_step(self, loop, step):
        if step == self.step:
            os.kill(os.getpid(), self.signum)


class PoisonAfterStep(Hook):
    """After ``step``, one array of ``part`` of the state (``'params'`` or ``'batch_stats'``)
    gets a NaN. For the parameters the step's ``l2_params`` is recomputed (as if the update had
    diverged while the loss stayed finite); a BatchNorm statistic leaves both the loss and
    ``l2_params`` finite."""

    def __init__(self, step: int, part: str = "params"):
        self.step, self.part = step, part

    def after_step(self, loop):
        if loop.step != self.step:
            return
        import jax
        import jax.numpy as jnp
        import optax

        leaves, treedef = jax.tree.flatten(getattr(loop.state, self.part))
        leaves[0] = leaves[0].at[(0,) * leaves[0].ndim].set(jnp.nan)
        poisoned = jax.tree.unflatten(treedef, leaves)
        loop.state = loop.state.replace(**{self.part: poisoned})
        if self.part == "params":
            loop.metrics = {**loop.metrics, "l2_params": optax.tree.norm(poisoned)}


if __name__ == "__main__":
    from ssl_jax import cli

    assert sys.argv[1] == "--kill-before-step", "usage: faults.py --kill-before-step N ARGS"
    hook = KillBeforeStep(int(sys.argv[2]))
    sys.exit(cli.main(sys.argv[3:], extra_hooks=[hook]))
