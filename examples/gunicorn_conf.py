"""gunicorn hooks for ``make run`` (examples/serve.py passes this file)."""


def when_ready(server):
    # the last line before the access log: where to go, and how to stop
    for listener in server.LISTENERS:
        print("aiopyramid demo: ready on %s/ - press Ctrl-C to stop"
              % (listener,), flush=True)
