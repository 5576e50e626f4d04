"""dynanoise's benchmarks, outside the product package (the wheel carries `service`
only): the code in ``bench.harness``, its committed results beside it (README.md,
results.json, the plots). Run ``python -m bench`` (or ``make bench``) from a checkout."""
