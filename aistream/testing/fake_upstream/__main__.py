"""``python -m aistream.testing.fake_upstream``: run the fake upstream (``cli.main``)."""

import sys

from aistream.testing.fake_upstream.cli import main

sys.exit(main())
