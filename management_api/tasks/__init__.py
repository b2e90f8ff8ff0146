"""Task orchestration for ``POST /v1/infer``: tasks file, strategies, breakers, deadlines.

A task names models, a prompt template and a strategy; each branch of a request is one ordinary
admitted request through the proxy's gateway (one slot, released exactly once), run on a bounded
pool. May import the shared core and ``proxy`` (and ``models`` for loaded models); only
``routes``, ``services`` and ``app`` import this package, never ``proxy`` or the core.
"""
