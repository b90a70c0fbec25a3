"""python -m tests.cluster up|down|status: see tests/cluster/daemon.py."""

import sys

from tests.cluster.daemon import main

sys.exit(main())
