"""HttpServer options given as custom mappings: items() results that are
not (key, value) pairs get a TypeError, never a crash.  Each case runs in a
fresh interpreter, so a crash fails the test instead of the run."""
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import asyncio, collections.abc, sys
    from aiopyramid.server import HttpServer

    class Odd(collections.abc.Mapping):
        def __init__(self, items):
            self._items = items
        def __getitem__(self, key):
            raise KeyError(key)
        def __iter__(self):
            return iter(())
        def __len__(self):
            return len(self._items)
        def items(self):
            return self._items

    loop = asyncio.new_event_loop()
    try:
        HttpServer(lambda e, s: [], loop,
                   secure_scheme_headers=Odd(%s))
    except TypeError as e:
        print("TypeError:", e)
    else:
        print("accepted")
    """
)


def run_case(items):
    proc = subprocess.run([sys.executable, "-c", SCRIPT % items],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.mark.parametrize("items, length", [
    ("[('X-FORWARDED-PROTO', 'https', 'extra')]", 3),
    ("[('X-FORWARDED-PROTO',)]", 1),
])
def test_items_of_the_wrong_length(items, length):
    out = run_case(items)
    assert out.startswith("TypeError:"), out
    assert "element #0 has length %d; 2 is required" % length in out


@pytest.mark.parametrize("items", ["[42]", "[None]"])
def test_items_that_are_not_pairs(items):
    out = run_case(items)
    assert out.startswith("TypeError:") and "element #0" in out, out


def test_pairs_as_lists_are_fine():
    assert run_case("[['X-FORWARDED-PROTO', 'https']]") == "accepted"
