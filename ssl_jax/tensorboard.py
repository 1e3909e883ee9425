"""TensorBoard event files without TensorFlow, through tensorboardX's protocol buffers.

    tb = EventWriter("runs/simclr/tensorboard", purge_step=301)   # a restart from step 300
    tb.scalars(301, {"loss": 4.2})
    tb.close()

The events (scalars, text, PNG images, hyper-parameters) are tensorboardX's (``summary``,
``proto``); they are written here in the caller's thread rather than by tensorboardX's
``SummaryWriter``, whose queue thread loses a failed write (disk full) to a traceback on stderr
and then blocks the training loop forever once its queue is full. Each file is flushed to the
OS after every event (a killed run loses nothing it logged; a record that cannot be written
whole is cut off again) and synced at close.

Restarts: a writer given ``purge_step`` starts its file with tensorboardX's ``purge_step``
events (``SessionLog.START`` at that step). TensorBoard then discards the events of earlier
files at steps >= purge_step, so the steps a killed run logged after its last checkpoint, and
logs again after the restart, show once.
"""

from __future__ import annotations

import io
import os
import socket
import struct
import sys
import time
from collections.abc import Mapping

from ssl_jax import outputs

# tensorboardX's package __init__ imports torch when it is installed (2-3 s and its libraries
# mapped into the training process) only to recognise torch tensors, which ssl_jax never passes
# (tensorboardX imports torch again itself if it is ever given one). Hide it for this import.
_HIDE_TORCH = "torch" not in sys.modules
if _HIDE_TORCH:
    sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` -> ImportError
try:
    from tensorboardX import summary as tbx_summary  # noqa: E402
    from tensorboardX.proto.event_pb2 import Event, SessionLog  # noqa: E402
    from tensorboardX.proto.summary_pb2 import Summary  # noqa: E402
    from tensorboardX.record_writer import masked_crc32c  # noqa: E402
finally:
    if _HIDE_TORCH and sys.modules.get("torch", 0) is None:
        del sys.modules["torch"]


class EventWriter:
    """A new ``events.out.tfevents.*`` file in ``logdir`` (made if missing; a link there is
    refused: :func:`ssl_jax.outputs.check_own_dir`), written synchronously. A failed write is
    an :class:`ssl_jax.outputs.OutputError` naming the file."""

    def __init__(self, logdir: str, *, purge_step: int | None = None):
        outputs.check_own_dir(logdir)
        # Files are read in name order: the seconds, then nanoseconds, keep a restart's file
        # after the one it purges even within one second; the name is also unguessable.
        now = time.time_ns()
        self.path = os.path.join(
            logdir,
            f"events.out.tfevents.{now // 10**9}.{socket.gethostname()}."
            f"{now % 10**9:09d}.{os.getpid()}",
        )
        self._file = outputs.AppendFile(self.path, new=True)
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))
        if purge_step is not None:  # what tensorboardX's SummaryWriter(purge_step=...) writes
            self._write(
                Event(
                    wall_time=time.time(),
                    step=purge_step,
                    session_log=SessionLog(status=SessionLog.START),
                )
            )

    def _write(self, event: Event) -> None:
        """One TFRecord: length, its masked CRC-32C, payload, its masked CRC-32C."""
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        record = (
            header
            + struct.pack("<I", masked_crc32c(header))
            + data
            + struct.pack("<I", masked_crc32c(data))
        )
        self._file.write(record)  # whole, or cut off again (OutputError)

    def summary(self, step: int, value: Summary) -> None:
        """Any tensorboardX ``Summary`` at ``step``."""
        self._write(Event(wall_time=time.time(), step=int(step), summary=value))

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """The int and float ``values`` (others, e.g. the strings 'nan', are skipped)."""
        kept = [
            tbx_summary.scalar(tag, float(v)).value[0]
            for tag, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        if kept:
            self.summary(step, Summary(value=kept))

    def text(self, step: int, tag: str, markdown: str) -> None:
        """Markdown for TensorBoard's Text tab."""
        self.summary(step, tbx_summary.text(tag, markdown))

    def png(self, step: int, tag: str, data: bytes) -> None:
        """An encoded PNG for the Images tab."""
        from PIL import Image  # only for the size and bands the Image summary records

        with Image.open(io.BytesIO(data)) as im:
            (width, height), bands = im.size, len(im.getbands())
        image = Summary.Image(
            height=height, width=width, colorspace=bands, encoded_image_string=data
        )
        self.summary(step, Summary(value=[Summary.Value(tag=tag, image=image)]))

    def hparams(
        self, step: int, hparams: Mapping[str, bool | int | float | str], metrics: Mapping
    ) -> None:
        """One HParams session: ``hparams`` and the scalar tags of ``metrics`` (written here
        too, at ``step``), for TensorBoard's HParams tab."""
        for value in tbx_summary.hparams(dict(hparams), dict(metrics)):
            self.summary(step, value)
        self.scalars(step, metrics)

    def close(self) -> None:
        """Sync and close the file (idempotent); OutputError when the sync fails."""
        self._file.close(sync=True)
