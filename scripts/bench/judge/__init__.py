"""Judge benchmarks: the pool's throughput (``throughput``, also ``python -m scripts.bench.judge``)
and the judge's bias controls (``bias``)."""
