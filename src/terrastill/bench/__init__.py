"""Throughput benchmark: "how fast can this model map the Earth?" (ThroughputBench protocol).

- :mod:`terrastill.bench.throughput`: warm-up + timed window per configuration, latency
  percentiles, peak memory, out-of-memory batch halving, resumable CSV;
- :mod:`terrastill.bench.hardware`: the hardware JSON written beside the CSV;
- :mod:`terrastill.bench.earth`: img/s → km²/s → hours and cost to map the land surface once.
"""
