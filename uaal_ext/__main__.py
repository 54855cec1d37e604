"""``python -m uaal_ext ...`` is the ``uaal`` command."""

import sys

from .experiment.cli import main

sys.exit(main())
