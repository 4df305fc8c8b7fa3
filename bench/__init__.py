"""aistream's benchmark harness: ``python -m bench`` (see docs/performance.md).

Every process runs on its own: an upstream, the generator, the bridge, the baseline servers and the
load clients talk over loopback, and the harness only starts them, samples their CPU and memory,
and turns what the clients and the upstream recorded into figures.

Modules: ``spec`` (what a stream should look like, carried in the prompt), ``upstream`` (the fast
fake OpenAI-compatible upstream), ``baselines`` (bare websockets and grpc.aio servers),
``wsclient`` (a lean WebSocket client protocol), ``client`` (the load client process),
``procs`` (child processes, CPU and RSS), ``stats`` (percentiles, median over repeats),
``scenarios`` (the six scenarios), ``report`` (table, JSON, plot), ``run`` (the command).
"""
