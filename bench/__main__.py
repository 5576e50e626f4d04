"""``python -m bench``: run the benchmarks (see bench/harness/cli.py, bench/README.md)."""

import sys

from bench.harness.cli import main

sys.exit(main())
