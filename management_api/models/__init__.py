"""Model management: the installed-model catalog, background pull jobs, disk-space checks.

May import the core modules only (the Ollama client, names); never Flask, never `proxy/`
(the proxy reads the catalog, not the other way round). Imported by `proxy/`, `routes/` and
the wiring.
"""
