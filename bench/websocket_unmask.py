#!/usr/bin/env python
"""Unmasking + UTF-8 validation of a received text frame, in MB/s, beside a
memcpy of the same buffer (DESIGN.md: within 4x of memcpy).

    .venv/bin/python bench/websocket_unmask.py            # ~20 s
    .venv/bin/python bench/websocket_unmask.py --quick    # a smoke run
    .venv/bin/python bench/websocket_unmask.py --strict   # exit 1 on a miss
    .venv/bin/python bench/websocket_unmask.py --simd ssse3  # a lesser path

`_core._websocket_unmask_validate(buf, mask)` does the per-byte work of a
received text frame: a new bytes object of the unmasked payload (the reader
unmasks while it copies out of the read buffer), validated as UTF-8.  With
AVX2 (chosen at run time) each 32 bytes are unmasked, stored and validated
(Keiser-Lemire table lookups, ASCII skipped 64 bytes a step) in one pass;
--simd ssse3 / scalar measure the paths of CPUs without it (SSSE3: unmasked
16 bytes a step, then validated 16 bytes a step, in 16 KiB pieces; scalar:
the state machine).  The baseline
`bytearray(buf)` allocates a buffer of the same size and memcpy()s into it:
the least any receive path can do.  Variants are interleaved: each round
times every variant once in random order, each ratio is taken within its
round, and the medians over rounds are reported.
"""
import argparse
import os
import platform
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from aiopyramid import _core  # noqa: E402

MASK = b"\x37\xfa\x21\x3d"
TARGET = 4.0


def payloads(size):
    ascii_text = (b"The quick brown fox jumps over the lazy dog. " * (size // 45 + 1))[:size]
    utf8 = "Grüße, 世界! Ça va? 😀 ".encode() * (size // 30 + 1)
    utf8 = utf8[:size]
    while True:  # whole characters only
        try:
            utf8.decode()
            break
        except UnicodeDecodeError:
            utf8 = utf8[:-1]
    return {"ASCII text": ascii_text, "UTF-8 text (mixed scripts)": utf8}


def sample(fn, buf, n):
    t0 = time.perf_counter_ns()
    for _ in range(n):
        fn(buf)
    return (time.perf_counter_ns() - t0) / n


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--sample-ms", type=float, default=20.0)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--strict", action="store_true")
    p.add_argument("--simd", choices=["avx2", "ssse3", "scalar"],
                   help="use at most this SIMD level (default: the CPU's best)")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.sample_ms = 5, 5.0
    simd = _core._websocket_simd(args.simd) if args.simd else _core._websocket_simd()

    unmask = _core._websocket_unmask_validate

    def ours(buf):
        return unmask(buf, MASK)

    rows, missed = [], []
    for size in (1024, 65536, 1 << 20):
        for kind, plain in payloads(size).items():
            # what arrives is masked; the result must be the plain text
            masked = bytes(b ^ MASK[i % 4] for i, b in enumerate(plain))
            assert unmask(masked, MASK) == plain
            variants = {"memcpy": bytearray, "unmask+validate": ours}
            n = {}
            for name, fn in variants.items():
                per = sample(fn, masked, 10)
                n[name] = max(1, int(args.sample_ms * 1e6 / max(per, 1)))
            times = {name: [] for name in variants}
            ratios = []
            for _ in range(args.rounds):
                order = list(variants)
                random.shuffle(order)
                got = {name: sample(variants[name], masked, n[name]) for name in order}
                for name in variants:
                    times[name].append(got[name])
                ratios.append(got["unmask+validate"] / got["memcpy"])
            copy_ns = statistics.median(times["memcpy"])
            ours_ns = statistics.median(times["unmask+validate"])
            ratio = statistics.median(ratios)
            mbs = lambda ns: len(masked) / ns * 1e3  # bytes/ns -> MB/s
            rows.append((size, kind, mbs(copy_ns), mbs(ours_ns), ratio))
            if ratio > TARGET:
                missed.append("%s %d B: %.2fx" % (kind, size, ratio))

    print("## Websocket unmask + UTF-8 validation\n")
    print("Python %s, %s, %d CPUs, %s\n" % (
        platform.python_version(), platform.machine(), os.cpu_count(),
        time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())))
    print("%d interleaved rounds, one sample of ~%.0f ms per variant per round; "
          "medians.  SIMD path: %s.\n" % (args.rounds, args.sample_ms, simd))
    print("| payload | size | memcpy MB/s | unmask+validate MB/s | ratio (paired median) | target <= %.0fx |" % TARGET)
    print("|---|---:|---:|---:|---:|---|")
    for size, kind, copy_mbs, ours_mbs, ratio in rows:
        print("| %s | %d B | %.0f | %.0f | %.2fx | %s |" % (
            kind, size, copy_mbs, ours_mbs, ratio, "ok" if ratio <= TARGET else "MISSED"))
    if missed:
        print("\nmissed: " + "; ".join(missed))
        if args.strict:
            sys.exit(1)


if __name__ == "__main__":
    main()
