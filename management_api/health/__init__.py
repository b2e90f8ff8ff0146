"""Health and self-healing: the 4-point check, the healing actions, the Ollama log reader.

May import the core modules, `proxy/` (to pause admission and cancel requests while models
unload) and `telemetry/`; never Flask. Imported by `routes/` and the wiring only.
"""
