"""Self-supervised losses: pure functions of embeddings.

Every loss takes the embeddings of the whole batch under plain ``jax.jit`` (a batch sharded over a
mesh included: XLA inserts the collectives). Inside ``jax.shard_map`` or ``jax.pmap`` each device
passes its LOCAL rows together with ``axis_name=``; the value, identical on every device, and the
gradients are then those of the loss over the global batch: each device scores only its own rows
(against candidates gathered across the axis), and the local sums are ``psum``-ed and divided by
the global count, so every term is differentiated once, on the device that owns it.

Gradients taken inside the mapped function follow the mapping's convention for ``psum``:

* ``jax.shard_map`` (default ``check_vma=True``): the gradient w.r.t. the local rows IS the
  gradient of the global loss w.r.t. those rows, and w.r.t. replicated parameters it is the full
  gradient, already reduced; no ``pmean`` is needed.
* ``jax.pmap`` (and ``shard_map(..., check_vma=False)``): the transpose of ``psum`` sums the
  cotangents of all devices, so the local gradient is ``axis_size`` times the global one; the usual
  recipe, ``jax.lax.pmean`` of the parameter gradients, gives exactly the global gradient.

Inputs of any floating dtype are computed in at least float32 (bfloat16 is cast up before any
arithmetic), so the result is float32 for bfloat16/float16/float32 inputs and float64 for float64.

Modules, by family: :mod:`~ssl_jax.losses.contrastive` (:func:`nt_xent` and
:func:`contrastive_accuracy`, direct or streamed in column blocks),
:mod:`~ssl_jax.losses.momentum_contrast` (:func:`moco_v3_loss`),
:mod:`~ssl_jax.losses.supervised_contrastive` (:func:`supcon_loss`),
:mod:`~ssl_jax.losses.distillation` (:func:`byol_loss`, :func:`simsiam_loss`),
:mod:`~ssl_jax.losses.self_distillation` (:func:`dino_loss`, :func:`dino_center`) and
:mod:`~ssl_jax.losses.redundancy` (:func:`barlow_twins_loss`, :func:`barlow_twins_terms`,
:func:`vicreg_loss`, :func:`vicreg_terms`); the input checks and the ``axis_name`` gathering
they share are in ``ssl_jax.losses._batch``. Everything public is re-exported here.
"""

from ssl_jax.losses.contrastive import contrastive_accuracy, nt_xent
from ssl_jax.losses.distillation import byol_loss, simsiam_loss
from ssl_jax.losses.momentum_contrast import moco_v3_loss
from ssl_jax.losses.redundancy import (
    barlow_twins_loss,
    barlow_twins_terms,
    vicreg_loss,
    vicreg_terms,
)
from ssl_jax.losses.self_distillation import dino_center, dino_loss
from ssl_jax.losses.supervised_contrastive import supcon_loss

__all__ = [
    "barlow_twins_loss",
    "barlow_twins_terms",
    "byol_loss",
    "contrastive_accuracy",
    "dino_center",
    "dino_loss",
    "moco_v3_loss",
    "nt_xent",
    "simsiam_loss",
    "supcon_loss",
    "vicreg_loss",
    "vicreg_terms",
]
