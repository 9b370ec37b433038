"""`python -m krate` runs the same entry point as the `krate` command."""

from krate.cli.main import main

raise SystemExit(main())
