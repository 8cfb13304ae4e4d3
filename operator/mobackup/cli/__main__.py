"""`python -m mobackup.cli`, as the `mobackup` console script."""

import sys

from . import main

sys.exit(main())
