"""gunicorn glue: ``aiopyramid.gunicorn.worker.AsyncGunicornWorker``."""
