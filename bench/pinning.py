"""One process per server, hello at 50 connections: the server free to run
on any CPU against the server on CPU 0 and wrk on CPU 1, interleaved.

With the GIL only one of a Python process's threads runs at a time; on two
cores, where the scheduler puts a server's threads against wrk's decides
how far each GIL hand-over travels.  `--only` picks the servers
(substrings of bench/peers.py's names)."""
import argparse
import os
import re
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402


def pin(pid, cpu):
    # every thread of the server's process group, as they are now
    out = subprocess.run(["pgrep", "-g", str(pid)], capture_output=True, text=True).stdout
    for p in out.split() or [str(pid)]:
        subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), p], capture_output=True)


def rate(url, pre, duration):
    out = subprocess.run(pre + ["wrk", "-t1", "-c50", "-d%ds" % duration, url],
                         capture_output=True, text=True, timeout=duration + 60).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return float(m.group(1)) if m else 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="ours, plain view (executor,ours, coroutine,bjoern,granian")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=3)
    args = ap.parse_args()
    want = [o.strip() for o in args.only.split(",")]
    cfgs = [c for c in peers.configs() if any(w in c[0] for w in want)]
    res = {(c[0], m): [] for c in cfgs for m in ("free", "pinned")}
    for r in range(args.rounds):
        for c in cfgs:
            for mode in ("free", "pinned"):
                port = peers.free_port()
                with open(os.devnull, "w") as log:
                    proc = peers.start(c, port, log)
                try:
                    pre = []
                    if mode == "pinned":
                        pin(proc.pid, 0)
                        pre = ["taskset", "-c", "1"]
                    url = "http://127.0.0.1:%d%s" % (port, c[2]["hello"])
                    rate(url, pre, 1)  # warm
                    res[(c[0], mode)].append(rate(url, pre, args.duration))
                    print("round %d %-45s %-6s %8.0f req/s" % (r + 1, c[0], mode,
                          res[(c[0], mode)][-1]), file=sys.stderr, flush=True)
                finally:
                    peers.stop(proc)
    print("| server | free (req/s) | server on CPU 0, wrk on CPU 1 (req/s) | pinned / free |")
    print("| --- | ---: | ---: | ---: |")
    for c in cfgs:
        f = statistics.median(res[(c[0], "free")])
        p = statistics.median(res[(c[0], "pinned")])
        print("| %s | %.0f | %.0f | %.2fx |" % (c[0], f, p, p / f if f else float("nan")))


if __name__ == "__main__":
    main()
