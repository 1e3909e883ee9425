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


class PoisonWeightsAfterStep(Hook):
    """After ``step``, one weight of the state becomes NaN, and the step's ``l2_params`` is
    recomputed from that state (as if the update had diverged while the loss stayed finite)."""

    def __init__(self, step: int):
        self.step = step

    def after_step(self, loop):
        if loop.step != self.step:
            return
        import jax
        import jax.numpy as jnp
        import optax

        leaves, treedef = jax.tree.flatten(loop.state.params)
        leaves[0] = leaves[0].at[(0,) * leaves[0].ndim].set(jnp.nan)
        params = jax.tree.unflatten(treedef, leaves)
        loop.state = loop.state.replace(params=params)
        loop.metrics = {**loop.metrics, "l2_params": optax.tree.norm(params)}


class PoisonBatchStatsAfterStep(Hook):
    """After ``step``, one BatchNorm statistic of the state becomes NaN: the loss and the
    weights (``l2_params``) still read finite."""

    def __init__(self, step: int):
        self.step = step

    def after_step(self, loop):
        if loop.step != self.step:
            return
        import jax
        import jax.numpy as jnp

        leaves, treedef = jax.tree.flatten(loop.state.batch_stats)
        leaves[0] = leaves[0].at[(0,) * leaves[0].ndim].set(jnp.nan)
        loop.state = loop.state.replace(batch_stats=jax.tree.unflatten(treedef, leaves))


if __name__ == "__main__":
    from ssl_jax import cli

    assert sys.argv[1] == "--kill-before-step", "usage: faults.py --kill-before-step N ARGS"
    hook = KillBeforeStep(int(sys.argv[2]))
    sys.exit(cli.main(sys.argv[3:], extra_hooks=[hook]))
