"""``python -m napari_miner.cli``: the ``napari-miner`` command line."""

import sys

from . import main

sys.exit(main())
