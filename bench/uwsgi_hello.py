"""The aio() hello-world app as a module attribute, for uWSGI (bench/http_bench.py)."""
from bench.hello_app import aio

application = aio()
