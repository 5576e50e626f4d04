"""The benchmark harness: the defense micro-benchmark, load tests of the service
against a naive FastAPI app and BentoML, memory; results as JSON, then markdown and
plots (``runner.run_bench``, ``cli.main``). ``launcher`` starts the servers, for the
benchmark and for the tests that need a live one."""
