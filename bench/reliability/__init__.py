"""Reliability evidence: an accounting load generator, a chaos run and a soak run.

    python -m bench.reliability.chaos [--minutes 10]
    python -m bench.reliability.soak [--minutes 30]

Both start the container's process tree (entrypoint.sh -> supervisord, the emulator standing in
for Ollama), fire a mixed load at the proxy, and end by checking that every request was accounted
for exactly once, against the emulator's observations, the service's access log and its limiter.
Summaries go to bench/results/.
"""
