"""``python -m ailora.cli``: the same as the ``ailora`` console script."""

import sys

from ailora.cli import main

sys.exit(main())
