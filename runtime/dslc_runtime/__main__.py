"""``python -m dslc_runtime run|bench|info MODEL ...``."""

import sys

from .cli import main

sys.exit(main())
