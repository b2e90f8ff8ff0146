"""Durable jobs: inference requests accepted now, run later, their results kept for a while.

`store` keeps jobs and results in SQLite (WAL) in the state directory, so a restart loses
nothing accepted; `manager` runs them on a bounded set of worker threads, at most a set number
per caller, and gives an interrupted job back to the queue up to a bound of attempts. How one
job is executed is handed in from outside (routes/jobs.py runs it through the service's own
request path), so this package knows neither Flask nor the proxy. May import the shared core
only; only ``routes``, ``services`` and ``app`` import this package.
"""
