"""The Ollama-compatible proxy: admission, forwarding and transport of inference requests.

Limits file and reloader (limits_config), per-model slots and queues (limiter), the order within
a model's queue (wait_queue) and the class a request waits in (priority), the order across
models (scheduler), request classification (inference), the gateway that admits and forwards, our
own HTTP/1.1 transport to Ollama (transport, upstream_response), what an answer cost
(answer_usage) and its lines read without generate's `context` (answer_lines). May import the
core modules and `models/` (the catalog); never Flask. Imported by `routes/`, `access/`,
`health/`, metrics and the wiring.
"""
