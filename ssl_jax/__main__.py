"""``python -m ssl_jax`` is the ``ssl-jax`` command."""

import sys

from ssl_jax.cli import main

sys.exit(main())
