"""Instructions per byte of unmasking + UTF-8 validation (ws_unmask_copy_text,
the C function behind a received text frame) on bench/websocket_unmask.py's
payloads at 64 KiB and 1 MiB, for each SIMD level this CPU has: a cost that
the machine's load does not change, unlike the MB/s of websocket_unmask.py.

    .venv/bin/python bench/callgrind_unmask.py      # runs valgrind itself

(--child LEVEL KIND is what valgrind runs: the calls alone.)
"""
import argparse
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from aiopyramid import _core  # noqa: E402
import websocket_unmask  # noqa: E402

REPEAT = 4


def child(level, kind):
    _core._websocket_simd(level)
    total = 0
    for size in (65536, 1 << 20):
        plain = websocket_unmask.payloads(size)[kind]
        mask = websocket_unmask.MASK
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(plain))
        for _ in range(REPEAT):
            _core._websocket_unmask_validate(masked, mask)
            total += len(masked)
    print("bytes %d" % total, file=sys.stderr)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--child", nargs=2, metavar=("LEVEL", "KIND"))
    args = p.parse_args()
    if args.child:
        child(*args.child)
        return
    best = _core._websocket_simd()
    levels = ["scalar", "ssse3", "avx2"]
    levels = levels[:levels.index(best) + 1]
    kinds = list(websocket_unmask.payloads(1024))
    print("| SIMD level | " + " | ".join(kinds) + " |")
    print("|---|" + "---:|" * len(kinds))
    for level in levels:
        row = []
        for kind in kinds:
            out = subprocess.run(
                ["valgrind", "--tool=callgrind", "--toggle-collect=ws_unmask_copy_text",
                 "--callgrind-out-file=/dev/null", sys.executable, os.path.abspath(__file__),
                 "--child", level, kind],
                capture_output=True, text=True, timeout=600)
            refs = re.search(r"refs:\s+([\d,]+)", out.stderr)
            nbytes = re.search(r"^bytes (\d+)", out.stderr, re.M)
            if out.returncode or not refs or not nbytes:
                sys.exit("valgrind failed:\n" + out.stderr[-2000:])
            row.append("%.2f" % (int(refs.group(1).replace(",", "")) / int(nbytes.group(1))))
        print("| %s | %s |" % (level, " | ".join(row)))
    print("\ninstructions per byte in ws_unmask_copy_text (callgrind)")


if __name__ == "__main__":
    main()
