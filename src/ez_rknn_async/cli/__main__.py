"""``python -m ez_rknn_async.cli`` is ``ez-rknn``."""

import sys

from .main import main

sys.exit(main())
