"""`python -m embtables.cli ...`, as the Makefile runs it."""

import sys

from embtables.cli import main

sys.exit(main())
