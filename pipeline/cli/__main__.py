"""`python -m pipeline.cli`: the `bnpipe` command."""

import sys

from pipeline.cli import main

sys.exit(main())
