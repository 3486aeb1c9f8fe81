"""`python -m wrpn_tvm` is the `wrpn-tvm` command."""

import sys

from .cli import main

sys.exit(main())
