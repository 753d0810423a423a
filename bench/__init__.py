"""Benchmarks: jobpool against what a Python user would write instead, on this host.

``python -m bench.ingest`` is the one to start with: jobpool and its peers under wrk, the
seed's 9-item batch, rounds alternated, medians (:mod:`bench.contenders` says what each
peer does and does not do; their packages come with ``pip install -e '.[bench]'``).
``bench.app_cost`` measures the app's CPU per request without HTTP, ``bench.cpu_scaling``
the cpu pool against one process, ``bench.chaos`` that no accepted job is lost while
workers are killed, ``bench.protocol`` what jobpool's HTTP layer (service/server.py) adds
to gunicorn's HTTP/1 protocol, alone in one process; ``bench.otlp_sink`` takes and drops
traces, to measure tracing's cost under ingest. ``--compare REF`` (ingest, app_cost)
runs another git revision's jobpool in the same run. The host has 2 vCPUs shared with
other work: compare figures within one run, over several rounds, never across runs.
"""
