"""``python -m pruning.magnitude``."""

from pruning.magnitude.cli import main

raise SystemExit(main())
