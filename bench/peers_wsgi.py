"""bench/peers_app.py's plain app as a module-level ``application`` (uWSGI's
--module looks the callable up in the module's dict)."""
from bench.peers_app import plain

application = plain()
