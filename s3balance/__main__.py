"""``python -m s3balance``: the ``s3balance`` console script (:mod:`s3balance.cli`)."""

import sys

from s3balance.cli import main

sys.exit(main())
