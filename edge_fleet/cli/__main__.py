"""`python -m edge_fleet.cli`: the same as `edge-fleet`."""

import sys

from . import main

sys.exit(main())
