"""``python -m dscnn.export``."""

from dscnn.export.cli import main

raise SystemExit(main())
