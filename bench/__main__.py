"""``python -m bench``: run the whole benchmark in one go."""

from bench.run import main

raise SystemExit(main())
