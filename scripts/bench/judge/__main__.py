"""``python -m scripts.bench.judge``: the judge-pool throughput benchmark (``throughput``)."""

import sys

from scripts.bench.judge.throughput import main

sys.exit(main())
