import sys

from fmtspec.cli import main

sys.exit(main())
