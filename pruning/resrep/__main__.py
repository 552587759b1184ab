"""``python -m pruning.resrep``."""

from pruning.resrep.cli import main

raise SystemExit(main())
