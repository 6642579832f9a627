"""Allow ``python -m autocore``."""

from autocore.cli import main

raise SystemExit(main())
