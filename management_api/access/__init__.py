"""Access: who may call what, and the per-request plumbing around every route.

API keys and roles (auth), allowed browser origins (cors) and Host names (hosts), the WSGI
layer that refuses cross-site and rebound requests first (guard), request ids, body caps, key
places and the access log (hooks), and the Flask error handlers (error_handlers). May import
the core modules and `proxy.inference` (which paths are inference routes) and Flask. Imported
by `routes/` and the app only; no part below the routes may import it.
"""
