"""`python -m fmtspec`: the same as the `fmtspec` command."""

import sys

from fmtspec.cli import main

sys.exit(main())
