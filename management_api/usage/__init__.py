"""Usage accounting per caller, model, task, hour, kept in SQLite across restarts (no Flask).

`recorder` turns each proxied request's access-log line into counts in an in-memory aggregate
(one entry per distinct bucket) that one background thread writes in batches; `store` is the
SQLite table of hourly buckets with pruning; `query` reads the parameters of `/api/usage`;
`callers` builds the status page's Callers table (and keeps the recent queue waits it shows).
Reads merge the table with what is not yet written, so an answer is exact at any moment.
May import the core modules and `proxy/`'s route table (which requests are inference);
imported by metrics, the wiring (services) and `routes/`.
"""
