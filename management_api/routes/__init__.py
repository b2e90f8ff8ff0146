"""HTTP routes: thin Flask blueprints per area, and the WSGI fast path for inference.

Each route parses and validates the request, calls a part (`proxy/`, `models/`, `health/`,
`telemetry/`, …) and renders its answer. May import every part, `access/` and Flask; nothing
but the app may import `routes/`.
"""
