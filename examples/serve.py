"""``make run``: the demo app under gunicorn with aiopyramid's worker.

    python examples/serve.py [--port 6543] [--workers 1] [gunicorn args...]
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    port = "6543"
    if "--port" in argv:
        i = argv.index("--port")
        port = argv[i + 1]
        del argv[i:i + 2]
    url = "http://127.0.0.1:%s/" % port
    print("aiopyramid demo: starting on %s (Ctrl-C stops it)" % url, flush=True)
    args = [
        sys.executable, "-m", "gunicorn",
        "--chdir", HERE,
        "--bind", "127.0.0.1:%s" % port,
        "--worker-class", "aiopyramid.gunicorn.worker.AsyncGunicornWorker",
        "--workers", "1",
        "--access-logfile", "-",
        "--config", os.path.join(HERE, "gunicorn_conf.py"),
        *argv,
        "app:main()",
    ]
    os.execv(sys.executable, args)


if __name__ == "__main__":
    main()
