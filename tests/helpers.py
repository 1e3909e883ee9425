"""Tiny configs shared by the training, CLI and evaluation tests."""

from ssl_jax.config import base_config


def tiny_config(method: str = "simclr", **overrides):
    """A config that trains in seconds on a CPU: 16x16x1 synthetic images, a 4-8-8-16 convnet."""
    c = base_config()
    c.method = method
    c.dataset = "synthetic"
    c.synthetic_examples = 96
    c.synthetic_classes = 4
    c.image_size, c.image_channels = 16, 1
    c.augment = "grayscale"
    c.model.encoder = "convnet"
    c.model.convnet.features = (4, 8, 8, 16)
    c.model.projector_hidden, c.model.projector_dim, c.model.predictor_hidden = 32, 16, 32
    c.batch_size = 16
    c.total_steps = 6
    c.warmup_steps = 2
    c.log_every, c.checkpoint_every = 1, 3
    c.optimizer, c.base_lr, c.lr_scaling = "lars", 0.5, "linear"
    c.eval_at_end = False  # tests that want it turn it on
    c.eval_every = 0  # the kNN monitor too
    for k, v in overrides.items():
        target = c
        *parents, leaf = k.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = v
    return c


def config_flags_for(config) -> list[str]:
    """The same config as --config.FIELD=VALUE overrides of the fashion-mnist recipe."""
    out = []
    for k, v in config.items():
        if hasattr(v, "items"):
            out += [f.replace("--config.", f"--config.{k}.", 1) for f in config_flags_for(v)]
        elif v is not None:
            out.append(f"--config.{k}={_fmt(v)}")
    return out


def _fmt(v):
    if isinstance(v, tuple | list):
        return "(" + ",".join(str(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return str(v)
