#!/usr/bin/env python
"""Benchmark of the greenlet <-> asyncio bridge (aiopyramid._core).

    make bench               # = .venv/bin/python bench/bridge.py, ~75 s
    .venv/bin/python bench/bridge.py --loop uvloop    # one loop only
    .venv/bin/python bench/bridge.py --quick          # a smoke run, ~3 s

A missed target is a result: it is printed (a FAIL verdict and a closing
"missed:" line) and the exit status stays 0; ``--strict`` exits 1 on a
miss, for a gate.  Everything is measured on
asyncio's default loop and, when installed, on uvloop (what the gunicorn
worker uses), each in its own worker processes.

Measured, all in one run, as time per call and as ratios:

(a) a coroutine that completes without suspending (``async def f(x):
    return x``) called N times in a loop
      - plain ``await f(i)`` in a coroutine (the baseline),
      - ``synchronize(f)(i)`` from plain code inside ONE
        ``await spawn_greenlet(loop_fn, N)`` (the C bridge),
      - ``await_only(f(i))`` inside one ``greenlet_spawn(loop_fn, N)``: a
        pure-Python bridge of SQLAlchemy's kind (bench/_purepy_bridge.py),
      - ``tf_synchronize(f)(i)`` inside one ``tf_spawn_greenlet``: the
        original aiopyramid design, a Task and a Future per call;
(b) the same for a coroutine that suspends once (``await asyncio.sleep(0)``);
(c) ``await spawn_greenlet(trivial)`` on a pooled greenlet, against
    ``greenlet.greenlet(trivial).switch()`` (a fresh greenlet each time) and
    against ``spawn_greenlet`` with ``_core.set_pool_limit(0)`` (so every
    spawn makes, and then discards, a fresh BridgeGreenlet).

How (benchmarks are hard; this is how these numbers were made):

- Why not pyperf: pyperf runs one benchmark to completion, then the next,
  so a slow minute on a shared machine lands on one variant.  What this
  bench reports are ratios, so it needs the variants *interleaved*: every
  round runs every variant once, in a fresh random order, and each ratio is
  taken *within a round* (paired), then the median over all rounds of all
  worker processes is reported.  Times per call are medians of the same
  samples.
- Several fresh worker processes per loop (``--processes``, default 5, run
  one after another, never in parallel, the loops alternating) so hash seeds and memory layout vary; each
  calibrates N per variant so that one sample lasts ``--sample-ms``, runs a
  few warm-up rounds (not reported), then ``--rounds`` rounds.
- A sample times only the N-call loop (``time.perf_counter_ns`` read just
  before and after the ``for``), inside the greenlet or coroutine that runs
  it: the one spawn, ``run_until_complete`` and one warm-up call per sample
  are outside the timed region.  The garbage collector stays on, as in a
  server.
- Nothing is subtracted in the "ns/call" and "ratio" columns: each variant's
  time includes its own ``for i in range(N)`` loop, the same loop for all.
  That loop's own cost is measured too (``loop overhead`` rows) and the
  "net" columns subtract it, per round; the targets are judged on the raw
  ratio and the net ratio is shown beside it (it is the stricter one).
"""
import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import warnings

# pyramid (imported by aiopyramid._core) still imports pkg_resources
warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))

import greenlet  # noqa: E402

from aiopyramid import _core  # noqa: E402
from aiopyramid.helpers import spawn_greenlet, synchronize  # noqa: E402

import _purepy_bridge as pp  # noqa: E402

perf = time.perf_counter_ns

# ---------------------------------------------------------------------------
# What is called


async def echo(x):
    return x


async def echo_suspend(x):
    await asyncio.sleep(0)
    return x


def trivial():
    return 1


sync_echo = synchronize(echo)
sync_echo_suspend = synchronize(echo_suspend)
tf_echo = pp.tf_synchronize(echo)
tf_echo_suspend = pp.tf_synchronize(echo_suspend)
await_only = pp.await_only
core_await = _core.await_

# ---------------------------------------------------------------------------
# Loops.  Each returns (elapsed ns of the N-call loop only, last result).
# The same `for i in range(n): r = ...` shape everywhere.


async def loop_overhead_coro(n):
    r = None
    t0 = perf()
    for i in range(n):
        r = i
    return perf() - t0, r


def loop_overhead_plain(n):
    r = None
    t0 = perf()
    for i in range(n):
        r = i
    return perf() - t0, r


async def await_loop(n, f):
    r = await f(0)  # warm-up, untimed
    t0 = perf()
    for i in range(n):
        r = await f(i)
    return perf() - t0, r


def sync_body(n, sf):
    r = sf(0)
    t0 = perf()
    for i in range(n):
        r = sf(i)
    return perf() - t0, r


def await_only_body(n, f):
    r = await_only(f(0))
    t0 = perf()
    for i in range(n):
        r = await_only(f(i))
    return perf() - t0, r


def core_await_body(n, f):
    r = core_await(f(0))
    t0 = perf()
    for i in range(n):
        r = core_await(f(i))
    return perf() - t0, r


def tf_body(n, sf):
    r = sf(0)
    t0 = perf()
    for i in range(n):
        r = sf(i)
    return perf() - t0, r


async def spawn_loop(n):
    spawn = spawn_greenlet
    fn = trivial
    r = await spawn(fn)
    t0 = perf()
    for _ in range(n):
        r = await spawn(fn)
    return perf() - t0, r


async def fresh_greenlet_loop(n):
    new = greenlet.greenlet
    fn = trivial
    r = new(fn).switch()
    t0 = perf()
    for _ in range(n):
        r = new(fn).switch()
    return perf() - t0, r


def _parked():
    parent = greenlet.getcurrent().parent
    while True:
        parent.switch()


_parked_greenlet = None


async def switch_floor_loop(n):
    """A bare greenlet round trip (main -> parked child -> main) from inside
    a Task step: the least any stackful bridge pays per suspension."""
    global _parked_greenlet
    if _parked_greenlet is None:
        _parked_greenlet = greenlet.greenlet(_parked)
    sw = _parked_greenlet.switch
    r = sw()
    t0 = perf()
    for i in range(n):
        r = sw()
    return perf() - t0, i if r == () else r


# ---------------------------------------------------------------------------
# Variants: key -> (group, label, coroutine function of n, expected result)

VARIANTS = {
    "loop_coro": ("ref", "loop overhead: `for i in range(N): r = i` in a coroutine",
                  loop_overhead_coro, "last"),
    "loop_plain": ("ref", "loop overhead: same loop in a plain function, in a spawned greenlet",
                   lambda n: spawn_greenlet(loop_overhead_plain, n), "last"),
    "a_await": ("a", "plain `await f(i)` in a coroutine",
                lambda n: await_loop(n, echo), "last"),
    "a_sync": ("a", "`synchronize(f)(i)` in one `spawn_greenlet` (C bridge)",
               lambda n: spawn_greenlet(sync_body, n, sync_echo), "last"),
    "a_core_await": ("a", "`_core.await_(f(i))` in one `spawn_greenlet` (info)",
                     lambda n: spawn_greenlet(core_await_body, n, echo), "last"),
    "a_purepy": ("a", "`await_only(f(i))` in one `greenlet_spawn` (pure-Python, SQLAlchemy kind)",
                 lambda n: pp.greenlet_spawn(await_only_body, n, echo), "last"),
    "a_taskfuture": ("a", "Task+Future per call in one `tf_spawn_greenlet` (original aiopyramid)",
                     lambda n: pp.tf_spawn_greenlet(tf_body, n, tf_echo), "last"),
    "b_await": ("b", "plain `await g(i)` in a coroutine",
                lambda n: await_loop(n, echo_suspend), "last"),
    "b_sync": ("b", "`synchronize(g)(i)` in one `spawn_greenlet` (C bridge)",
               lambda n: spawn_greenlet(sync_body, n, sync_echo_suspend), "last"),
    "b_purepy": ("b", "`await_only(g(i))` in one `greenlet_spawn` (pure-Python, SQLAlchemy kind)",
                 lambda n: pp.greenlet_spawn(await_only_body, n, echo_suspend), "last"),
    "b_taskfuture": ("b", "Task+Future per call in one `tf_spawn_greenlet` (original aiopyramid)",
                     lambda n: pp.tf_spawn_greenlet(tf_body, n, tf_echo_suspend), "last"),
    "b_switch": ("b", "info: bare greenlet round trip (2 switches) from a Task step, no bridge, no coroutine",
                 switch_floor_loop, "last"),
    "c_pooled": ("c", "`await spawn_greenlet(trivial)`, pooled greenlet",
                 spawn_loop, 1),
    "c_fresh": ("c", "`greenlet.greenlet(trivial).switch()`, fresh greenlet",
                fresh_greenlet_loop, 1),
    "c_nopool": ("c", "`await spawn_greenlet(trivial)` with `set_pool_limit(0)`",
                 spawn_loop, 1),
}

# (numerator, denominator, what it says)
RATIOS = [
    ("a_sync", "a_await", "(a) synchronized / plain await"),
    ("a_purepy", "a_sync", "(a) pure-Python bridge / synchronized"),
    ("a_taskfuture", "a_sync", "(a) Task+Future / synchronized"),
    ("a_core_await", "a_await", "(a) _core.await_ / plain await (info)"),
    ("b_sync", "b_await", "(b) synchronized / plain await"),
    ("b_purepy", "b_sync", "(b) pure-Python bridge / synchronized"),
    ("b_taskfuture", "b_sync", "(b) Task+Future / synchronized"),
    ("b_switch", "b_await", "(b) bare greenlet round trip / plain await (info: the floor of b_sync - b_await)"),
    ("c_pooled", "c_fresh", "(c) pooled spawn / fresh greenlet"),
    ("c_pooled", "c_nopool", "(c) pooled spawn / spawn with pool limit 0"),
]

# which loop-overhead row to subtract for the "net" columns
LOOP_OF = {k: ("loop_plain" if k in ("a_sync", "a_core_await", "a_purepy",
                                     "a_taskfuture", "b_sync", "b_purepy",
                                     "b_taskfuture")
               else "loop_coro") for k in VARIANTS}

# (label, numerator, denominator, op, threshold)
TARGETS = [
    ("(a) synchronized within 1.3x of plain await", "a_sync", "a_await", "<=", 1.3),
    ("(a) synchronized at least 5x cheaper than pure-Python bridge", "a_purepy", "a_sync", ">=", 5.0),
    ("(b) suspending synchronized within 1.5x of plain await", "b_sync", "b_await", "<=", 1.5),
    ("(c) pooled spawn at most 1/5 of a fresh greenlet", "c_pooled", "c_fresh", "<=", 0.2),
]


# ---------------------------------------------------------------------------
# Worker process


def new_loop(kind):
    if kind == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class Runner:
    def __init__(self, kind):
        self.loop = new_loop(kind)
        asyncio.set_event_loop(self.loop)
        self.default_limit = _core.pool_stats()["limit"]

    def sample(self, key, n):
        """One sample: returns (ns per call, greenlets created)."""
        group, label, make, expect = VARIANTS[key]
        if key == "c_nopool":
            _core.set_pool_limit(0)
        try:
            created0 = _core.pool_stats()["created"]
            elapsed, r = self.loop.run_until_complete(make(n))
            created = _core.pool_stats()["created"] - created0
        finally:
            if key == "c_nopool":
                _core.set_pool_limit(self.default_limit)
        want = n - 1 if expect == "last" else expect
        if r != want:
            raise AssertionError(f"{key}: got {r!r}, expected {want!r}")
        return elapsed / n, created

    def calibrate(self, key, sample_ns):
        n = 16
        while True:
            per_call, _ = self.sample(key, n)
            total = per_call * n
            if total >= sample_ns / 8 or n >= 1 << 24:
                break
            n *= 4
        return max(16, int(sample_ns / per_call))


def worker(args):
    rng = random.Random(args.seed)
    run = Runner(args.loop)
    sample_ns = args.sample_ms * 1e6
    keys = list(VARIANTS)
    ns = {k: run.calibrate(k, sample_ns) for k in keys}
    for _ in range(args.warmup):
        for k in rng.sample(keys, len(keys)):
            run.sample(k, ns[k])
    times = {k: [] for k in keys}
    created = {k: [] for k in keys}
    for _ in range(args.rounds):
        for k in rng.sample(keys, len(keys)):
            t, c = run.sample(k, ns[k])
            times[k].append(t)
            created[k].append(c / ns[k])
    run.loop.close()
    json.dump({"n": ns, "times": times, "created_per_call": created}, sys.stdout)


# ---------------------------------------------------------------------------
# Parent: run workers, aggregate, print markdown


def quantiles(xs):
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], statistics.median(xs), q[2]


def fmt_ns(x):
    if x >= 10000:
        return f"{x / 1000:.1f} µs"
    if x >= 1000:
        return f"{x / 1000:.2f} µs"
    return f"{x:.1f} ns"


def environment():
    try:
        commit = subprocess.run(
            ["git", "-C", os.path.dirname(HERE), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        commit = "?"
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"Python {platform.python_version()} ({platform.python_implementation()}), "
            f"greenlet {greenlet.__version__}, {cpu}, {os.cpu_count()} CPUs, "
            f"aiopyramid commit {commit}, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


def loop_name(kind):
    if kind == "uvloop":
        import importlib.metadata as md
        return "uvloop " + md.version("uvloop")
    return "asyncio (default loop)"


def report(runs, kind):
    """Prints one loop's tables; returns {target label: (raw, net, ok)}."""
    keys = list(VARIANTS)
    times = {k: [t for r in runs for t in r["times"][k]] for k in keys}
    created = {k: statistics.median(c for r in runs for c in r["created_per_call"][k])
               for k in keys}
    # paired: the same round of the same worker
    rounds = [(r, j) for r in runs for j in range(len(r["times"][keys[0]]))]

    def paired(num, den, net=False):
        out = []
        for r, j in rounds:
            a, b = r["times"][num][j], r["times"][den][j]
            if net:
                a -= r["times"][LOOP_OF[num]][j]
                b -= r["times"][LOOP_OF[den]][j]
                if b <= 0:
                    continue
            out.append(a / b)
        return quantiles(out)

    def net_time(k):
        if k.startswith("loop"):
            return None
        return statistics.median(
            r["times"][k][j] - r["times"][LOOP_OF[k]][j] for r, j in rounds)

    def n_range(k):
        lo, hi = min(r["n"][k] for r in runs), max(r["n"][k] for r in runs)
        return str(lo) if lo == hi else f"{lo}–{hi}"

    print(f"## Loop: {loop_name(kind)}\n")
    print(f"{len(runs)} processes, medians over {len(rounds)} rounds, ratios "
          f"paired within a round.\n")
    base = {"a": "a_await", "b": "b_await", "c": "c_fresh"}
    titles = {
        "ref": "Loop overhead (included in every row below; subtracted only in the net column)",
        "a": "(a) `async def f(x): return x` (never suspends)",
        "b": "(b) `async def g(x): await asyncio.sleep(0); return x` (suspends once)",
        "c": "(c) running `def trivial(): return 1` in a greenlet",
    }
    for group in ("ref", "a", "b", "c"):
        print(f"### {titles[group]} [{kind}]\n")
        b = base.get(group)
        hdr = "| variant | N per sample (min–max over processes) | ns/call (median) | p25–p75 | net of loop |"
        sep = "|---|---:|---:|---:|---:|"
        if b:
            hdr += f" ratio vs `{b}` (paired median) | greenlets created/call |"
            sep += "---:|---:|"
        print(hdr)
        print(sep)
        for k in keys:
            g, label, _, _ = VARIANTS[k]
            if g != group:
                continue
            q1, med, q3 = quantiles(times[k])
            nt = net_time(k)
            row = (f"| `{k}`: {label} | {n_range(k)} | "
                   f"{fmt_ns(med)} | {fmt_ns(q1)}–{fmt_ns(q3)} | "
                   f"{fmt_ns(nt) if nt is not None else '—'} |")
            if b:
                rr = "1" if k == b else f"{paired(k, b)[1]:.3f}"
                row += f" {rr} | {created[k]:.3g} |"
            print(row)
        print()

    print(f"### Ratios [{kind}] (paired within each round; median and p25–p75)\n")
    print("| ratio | raw | raw p25–p75 | net of loop overhead |")
    print("|---|---:|---:|---:|")
    for num, den, what in RATIOS:
        q1, med, q3 = paired(num, den)
        nq = paired(num, den, net=True)
        print(f"| {what} (`{num}`/`{den}`) | {med:.3f} | {q1:.3f}–{q3:.3f} | "
              f"{nq[1]:.3f} |")
    print()
    results = {}
    for label, num, den, op, thr in TARGETS:
        med = paired(num, den)[1]
        nmed = paired(num, den, net=True)[1]
        ok = med <= thr if op == "<=" else med >= thr
        nok = nmed <= thr if op == "<=" else nmed >= thr
        results[label] = (med, nmed, ok, nok)
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    try:
        import uvloop  # noqa: F401
        default_loops = "asyncio,uvloop"
    except ImportError:
        default_loops = "asyncio"
    p.add_argument("--loop", default=default_loops,
                   help="comma-separated: asyncio, uvloop (default: %(default)s)")
    p.add_argument("--processes", type=int, default=5,
                   help="worker processes per loop (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--sample-ms", type=float, default=4.0)
    p.add_argument("--quick", action="store_true",
                   help="1 process per loop, 30 rounds, 2 ms samples: a smoke run")
    p.add_argument("--json", metavar="FILE", help="also write raw samples here")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when a target is missed (default: report it, exit 0)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.processes, args.rounds, args.sample_ms = 1, 30, 2.0
    if args.worker:
        return worker(args)
    loops = [x.strip() for x in args.loop.split(",") if x.strip()]
    for kind in loops:
        if kind not in ("asyncio", "uvloop"):
            p.error(f"unknown loop {kind!r}")

    t_start = time.monotonic()
    runs = {kind: [] for kind in loops}
    total = args.processes * len(loops)
    done = 0
    # one worker at a time (2 cores: never two at once), loops alternating
    for i in range(args.processes):
        for kind in loops:
            cmd = [sys.executable, os.path.abspath(__file__), "--worker",
                   "--seed", str(i + 1), "--loop", kind,
                   "--rounds", str(args.rounds), "--warmup", str(args.warmup),
                   "--sample-ms", str(args.sample_ms)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                sys.stderr.write(out.stderr)
                sys.exit(f"worker {i + 1} ({kind}) failed ({out.returncode})")
            runs[kind].append(json.loads(out.stdout))
            done += 1
            print(f"<!-- worker {done}/{total} done, "
                  f"{time.monotonic() - t_start:.0f} s -->", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "runs": runs}, fh)

    print(f"# Bridge benchmark\n\n{environment()}\n")
    print(f"Per loop: {args.processes} worker processes (run one at a time) x "
          f"{args.rounds} interleaved rounds (+{args.warmup} warm-up); every "
          f"round runs every variant once, in random order, one sample of N "
          f"calls (~{args.sample_ms:g} ms) each.  Times include each "
          f"variant's own `for` loop; \"net\" subtracts the measured loop "
          f"overhead of the same round.\n")
    results = {kind: report(runs[kind], kind) for kind in loops}

    print("## Targets (DESIGN.md, Performance)\n")
    print("| target | " + " | ".join(f"{k}: raw (net)" for k in loops)
          + " | verdict |")
    print("|---|" + "---:|" * len(loops) + "---|")
    missed = []
    for label, num, den, op, thr in TARGETS:
        cells, verdicts = [], []
        for kind in loops:
            med, nmed, ok, nok = results[kind][label]
            cells.append(f"{med:.3f} ({nmed:.3f})")
            v = "PASS" if ok else "FAIL"
            if ok and not nok:
                v += " (net FAIL)"
            verdicts.append(f"{kind} {v}")
            if not ok:
                missed.append(f"{label} on {kind}")
        print(f"| {label} (`{num}`/`{den}` {op} {thr:g}) | "
              + " | ".join(cells) + " | **" + "; ".join(verdicts) + "** |")
    opts = [f"--loop {args.loop}"] if args.loop != default_loops else []
    if args.quick:
        opts.append("--quick")
    else:
        opts += [f"--processes {args.processes}", f"--rounds {args.rounds}",
                 f"--sample-ms {args.sample_ms:g}"]
    print(f"\n_Verdicts on the raw ratio; total {time.monotonic() - t_start:.0f} s; "
          f"reproduce: `make build && .venv/bin/python bench/bridge.py "
          f"{' '.join(opts)}`_")
    print("\nmissed: " + "; ".join(missed) if missed
          else "\nall targets met")
    return 1 if missed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
