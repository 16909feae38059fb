"""``python -m fastadv ...``: the ``fastadv`` command (see :mod:`fastadv.cli`)."""
import sys

from .cli import main

sys.exit(main())
