"""``python -m tinypft``: the same as the ``tinypft`` command."""

from tinypft.cli import main

raise SystemExit(main())
