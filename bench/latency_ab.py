"""A/B of one server of bench/peers.py under the same wrk load, interleaved
pairs: builds of _core swapped in place, the same build with an
environment variable set two (or more) ways, or two checkouts' builds.

    .venv/bin/python bench/latency_ab.py --so /tmp/before.so,/tmp/after.so
    .venv/bin/python bench/latency_ab.py --env AIOPYRAMID_LOOP=uvloop,asyncio
    .venv/bin/python bench/latency_ab.py --trees /tmp/before,.   # two built checkouts

--so copies each file over this checkout's aiopyramid/_core*.so before
its server starts (keep a copy of your own build: the last one stays).

Each pair runs every variant once (their order alternating from pair to
pair), each in a fresh server on CPU 0 with wrk on CPU 1 (as
bench/peers.py), warmed up 1 s, then wrk -t1 for --duration s at --conns
connections while `perf stat -p` counts the serving process: its CPU time
(task-clock), its context switches, and the tasks it wakes (sched_wakeup: wrk's
thread, each reply finding it asleep), per request.  Every pair is shown
(on a shared machine, the pairs are the only fair comparison), then the
medians.
"""
import argparse
import glob
import os
import shutil
import statistics

import peers  # bench/ is sys.path[0]
from http_bench import perf_counts, perf_stat
from tail import worker_pid

EVENTS = ["task-clock", "context-switches", "sched:sched_wakeup"]


def run(cfg, view, conns, duration, root=None):
    port = peers.free_port()
    name, cmd, paths, env, ours = cfg
    if root is not None:  # another checkout: its venv's python, its tree
        py = os.path.join(root, ".venv", "bin", "python")
        argv = cmd(port)
        cmd = lambda port, argv=argv: [py] + argv[1:]  # noqa: E731
        env = dict(env, PYTHONPATH=root)
    with open(os.devnull, "w") as log:
        proc = peers.start((name, cmd, paths, env, ours), port, log, 0)
    try:
        url = "http://127.0.0.1:%d%s" % (port, paths[view])
        peers.wrk(url, 10, 1, 1)
        perf = perf_stat(worker_pid(proc), EVENTS)
        w = peers.wrk(url, conns, duration, 1)
        counts = perf_counts(perf)
    finally:
        peers.stop(proc)
    n = w["rps"] * duration or 1
    w["us"] = counts.get("task-clock", 0) * 1e3 / n  # msec -> µs per request
    w["cs"] = counts.get("context-switches", 0) / n
    w["wakeups"] = counts.get("sched:sched_wakeup", 0) / n
    return w


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="ours, coroutine view")
    ap.add_argument("--env", help="NAME=a,b,...: the variants")
    ap.add_argument("--trees", help="DIR,DIR: built checkouts (the variants)")
    ap.add_argument("--so", help="FILE,FILE: builds of _core (the variants)")
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--duration", type=int, default=3)
    ap.add_argument("--view", default="hello")
    args = ap.parse_args()
    peers.raise_fd_limit()
    cfg = [c for c in peers.configs() if c[0] == args.only][0]
    if args.env:
        var, _, values = args.env.partition("=")
        variants = [("%s=%s" % (var, v), dict(cfg[3], **{var: v}), None)
                    for v in values.split(",")]
    elif args.so:
        variants = [(f, cfg[3], None) for f in args.so.split(",")]
        target, = glob.glob(os.path.join(peers.ROOT, "aiopyramid", "_core.*.so"))
    else:
        variants = [(t, cfg[3], os.path.abspath(t)) for t in args.trees.split(",")]
    res = {}
    for i in range(args.pairs):
        for label, env, root in (variants if i % 2 == 0 else variants[::-1]):
            if args.so:
                shutil.copyfile(label, target)
            w = run(cfg[:3] + (env, cfg[4]), args.view, args.conns, args.duration, root)
            res.setdefault(label, []).append(w)
            print("pair %d %-32s %7.0f req/s  p50 %7.2f  p99 %7.2f ms  %6.1f us CPU  "
                  "%.3f cs  %.3f wakeups /req %s" % (
                      i + 1, label, w["rps"], w["p50"], w["p99"], w["us"], w["cs"],
                      w["wakeups"], w["errors"]), flush=True)
    print()
    print("| variant | req/s | p50 (ms) | p99 (ms) | CPU µs / req | context switches / req | "
          "wake-ups / req |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, ws in res.items():
        m = {k: statistics.median(w[k] for w in ws)
             for k in ("rps", "p50", "p99", "us", "cs", "wakeups")}
        print("| %s | %.0f | %.2f | %.2f | %.1f | %.3f | %.3f |" % (
            label, m["rps"], m["p50"], m["p99"], m["us"], m["cs"], m["wakeups"]))


if __name__ == "__main__":
    main()
