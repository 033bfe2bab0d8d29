"""``python -m numbanet`` runs the command line."""

from numbanet.cli import main

raise SystemExit(main())
