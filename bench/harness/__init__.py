"""The benchmark harness: the defense micro-benchmark, load tests of the service
against the peers users would pick (MLServer, KServe, LitServe, BentoML, a naive FastAPI
app, each from its own virtual environment) and a bare ASGI framework floor, batching on
a generated CNN, overload with the admission queue, memory; results as JSON, then
markdown and plots (``runner.run_bench``, ``cli.main``). ``launcher`` starts the
servers, for the benchmark and for the tests that need a live one."""
