"""`python -m dynamic_tinybert.cli` (what torchrun launches): the same as `dtb`."""

import sys

from . import main

sys.exit(main())
