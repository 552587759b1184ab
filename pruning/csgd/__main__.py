"""``python -m pruning.csgd``."""

from pruning.csgd.cli import main

raise SystemExit(main())
