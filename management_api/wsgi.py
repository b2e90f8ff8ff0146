"""WSGI entry point for gunicorn: ``management_api.wsgi:app``.

Importing this builds the app (in the worker, after fork) but starts nothing: the gunicorn
config's ``post_worker_init`` hook starts the background services.
"""

from management_api.app import configure_logging, create_app

configure_logging()
app = create_app()
