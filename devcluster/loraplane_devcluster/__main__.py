"""``python -m loraplane_devcluster``: see :mod:`loraplane_devcluster.cli`."""

import sys

from loraplane_devcluster.cli import main

sys.exit(main())
