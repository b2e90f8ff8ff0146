"""Response cache and request coalescing for deterministic answers (no Flask).

What may be cached and under which key (policy), the byte-capped LRU store with a TTL (store),
capturing a relayed answer and replaying it in any request shape (answers), /api/embed batches
item by item (embeddings), and the service the gateway calls in front of admission (service).
May import the core modules and `proxy/`'s request types, classification and answer reading
(answer_lines, answer_usage); `proxy/` never imports it (the wiring hands the gateway one).
Imported by `routes/`, metrics and the wiring.
"""
