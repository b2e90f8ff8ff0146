"""An Ollama emulator for tests, benchmarks and ``make run`` (see ``ollama-api.md``).

Run it with ``python -m tests.fake_ollama --port 0``; drive it from tests with
``tests.fake_ollama.harness.FakeOllama``. Modules, one concern each:

* ``server``: gin-like routing, Host/Origin checks, dispatch; ``control_routes``: ``/_fake``
* ``inference``, ``embedding``, ``management``, ``openai_layer``: the API handlers
* ``scheduler``: runners, keep-alive, the pending queue, parallel slots
* ``pulls``: shared, resumable blob downloads
* ``exchange``: response rendering, streaming and fault application
* ``control``: faults and observations; ``state``: everything a reset replaces
* ``bodies``/``schemas``: Go-style JSON decoding; ``names``: the model-name grammar
* ``durations``/``timefmt``: Go durations and timestamps; ``models``/``textgen``: content
* ``structured``/``regexgen``: ``format`` as a grammar would constrain it; ``toolcalls``: when
  a chat answer is a tool call

It behaves as Ollama 0.32.15, the release the Dockerfile ships (``management.VERSION``).
"""
