"""Hello-world throughput of two checkouts of aiopyramid, interleaved.

    python3 bench/compare_builds.py BEFORE_DIR AFTER_DIR [--rounds 7] [--duration 4]
        [--path /hello-legacy] [--loops uvloop]

Each directory is a built checkout (``make build``: its own ``.venv`` and
``_core``).  Round after round, for uvloop and asyncio's loop, each
checkout's gunicorn worker serves ``bench.hello_app:aio()``'s coroutine view
(``--path /hello-legacy``: its plain view, through the executor) to
``wrk -t1 -c50`` (warmed up for 1 s); the figure is the median of the
rounds and of the paired after/before ratios.  With two CPUs or more, the
server runs on the first and wrk on the second, as bench/peers.py does
(``--no-pin``: where the scheduler puts them).  Used to check that a change
costs what it is said to cost (needs wrk).
"""
import argparse
import os
import re
import signal
import statistics
import subprocess

from http_bench import (  # bench/ is sys.path[0]
    cpu_times, fmt_steal, free_port, pinned_cpus, steal_percent, taskset, wait_ready)

WORKER = "aiopyramid.gunicorn.worker.AsyncGunicornWorker"


def one_run(root, loop, duration, path="/hello", cpus=(None, None)):
    server_cpu, wrk_cpu = cpus
    port = free_port()
    env = dict(os.environ, PYTHONPATH=root, AIOPYRAMID_LOOP=loop)
    proc = subprocess.Popen(
        taskset(server_cpu) + [os.path.join(root, ".venv", "bin", "python"), "-m", "gunicorn",
         "-b", "127.0.0.1:%d" % port, "-w", "1", "--no-control-socket",
         "--worker-connections", "4000", "--log-level", "warning", "-k", WORKER,
         "bench.hello_app:aio()"],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        wait_ready(port, path, proc)
        url = "http://127.0.0.1:%d%s" % (port, path)
        subprocess.run(taskset(wrk_cpu) + ["wrk", "-t1", "-c50", "-d1s", url],
                       capture_output=True, timeout=60)
        before = cpu_times()
        out = subprocess.run(taskset(wrk_cpu) + ["wrk", "-t1", "-c50", "-d%ds" % duration, url],
                             capture_output=True, text=True,
                             timeout=duration + 60).stdout
        return (float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
                steal_percent(before, cpu_times()))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--duration", type=int, default=4)
    ap.add_argument("--path", default="/hello")
    ap.add_argument("--loops", default="uvloop,asyncio")
    ap.add_argument("--no-pin", action="store_true")
    args = ap.parse_args()
    cpus = pinned_cpus(args.no_pin)
    loops = args.loops.split(",")
    trees = {"before": os.path.abspath(args.before),
             "after": os.path.abspath(args.after)}
    results = {}
    for r in range(args.rounds):
        for loop in loops:
            for name, root in trees.items():
                rps, steal = one_run(root, loop, args.duration, args.path, cpus)
                results.setdefault((loop, name), []).append(rps)
                print("round %d %-7s %-6s %8.0f req/s  steal %s" % (
                    r, loop, name, rps, fmt_steal(steal)), flush=True)
    print()
    print("| loop | before req/s | after req/s | after/before (median of paired rounds) |")
    print("| --- | ---: | ---: | ---: |")
    for loop in loops:
        before, after = results[(loop, "before")], results[(loop, "after")]
        ratio = statistics.median(a / b for a, b in zip(after, before))
        print("| %s | %.0f | %.0f | %.2fx |" % (
            loop, statistics.median(before), statistics.median(after), ratio))


if __name__ == "__main__":
    main()
