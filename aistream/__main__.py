"""``python -m aistream``: the same as the ``aistream`` command."""

import sys

from aistream.cli import main

sys.exit(main())
