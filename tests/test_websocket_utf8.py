"""UTF-8 validation and unmasking of text frames at every SIMD level the CPU
has (AVX2: unmasked and validated in one pass, 32 bytes a step; SSSE3: 16
bytes a step; scalar: the state machine), each held to a reference written
here from RFC 3629's table of well-formed sequences and to Python's own
decoder: random text, and adversarial text with every kind of defect at
every offset around the 32- and 64-byte block edges, whole and split at
every point across frames and across reads.  A message with a defect must
be refused (1007) in the read that brings the byte making it invalid, not
before and not later."""
import asyncio
import functools
import random
import zlib

import pytest

from aiopyramid import _core

from .test_websocket_core import FakeTransport, is_utf8, random_text
from .wsclient import CONT, TEXT, frame, mask_bytes

BEST = _core._websocket_simd()
LEVELS = ["avx2", "ssse3", "scalar"]


@pytest.fixture(params=LEVELS)
def level(request):
    got = _core._websocket_simd(request.param)
    try:
        if got != request.param:
            pytest.skip("this CPU has no %s" % request.param)
        yield got
    finally:
        _core._websocket_simd(BEST)


def first_error(data):
    """Where a UTF-8 stream goes wrong (RFC 3629 section 4): the index of
    the first byte that no valid UTF-8 can have there, len(data) when the
    data is a valid start cut short, None when it is valid."""
    i, n = 0, len(data)
    while i < n:
        b = data[i]
        if b < 0x80:
            i += 1
            continue
        if 0xC2 <= b <= 0xDF:
            need, lo, hi = 1, 0x80, 0xBF
        elif b == 0xE0:
            need, lo, hi = 2, 0xA0, 0xBF
        elif b == 0xED:
            need, lo, hi = 2, 0x80, 0x9F
        elif 0xE1 <= b <= 0xEF:
            need, lo, hi = 2, 0x80, 0xBF
        elif b == 0xF0:
            need, lo, hi = 3, 0x90, 0xBF
        elif 0xF1 <= b <= 0xF3:
            need, lo, hi = 3, 0x80, 0xBF
        elif b == 0xF4:
            need, lo, hi = 3, 0x80, 0x8F
        else:
            return i
        i += 1
        for _ in range(need):
            if i == n:
                return n
            if not lo <= data[i] <= hi:
                return i
            lo, hi = 0x80, 0xBF
            i += 1
    return None


# defects: overlong forms, surrogates, past U+10FFFF, bytes that are never
# UTF-8, lone and extra continuations, sequences cut short (then ASCII, a
# lead, or the end of the message)
BAD = [
    b"\xc0\x80", b"\xc1\xbf", b"\xe0\x80\x80", b"\xe0\x9f\xbf", b"\xf0\x80\x80\x80",
    b"\xf0\x8f\xbf\xbf", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xf4\x90\x80\x80",
    b"\xf4\xbf\xbf\xbf", b"\xf5\x80\x80\x80", b"\xf7\xbf\xbf\xbf", b"\xf8\x88\x80\x80\x80",
    b"\xfe", b"\xff", b"\x80", b"\xbf", b"\xc3\xa9\xa9", b"\xe2\x82\xac\x80",
    b"\xc3", b"\xe2\x82", b"\xf0\x9f\x98", b"\xc3\xc3\xa9", b"\xe2\x28\xa1",
    b"\xf0\x9f\x28\x80", b"\xe2\x82\xe2\x82\xac", b"\xf0\x9f\x98\xc3\xa9",
]
# the edges of each length: they must pass wherever they fall
GOOD = [
    b"\xc2\x80", b"\xdf\xbf", b"\xe0\xa0\x80", b"\xed\x9f\xbf", b"\xee\x80\x80",
    b"\xef\xbf\xbf", b"\xf0\x90\x80\x80", b"\xf4\x8f\xbf\xbf", b"\xe2\x82\xac",
    b"\xf0\x9f\x98\x80",
]
FILL = {
    "ascii": lambda n: b"a" * n,
    "mixed": lambda n: "é".encode() * (n // 2) + b"b" * (n % 2),
}
TAILS = [b"", b"z", "ü".encode()]
# what a message may not end with
CUT = [b"\xc3", b"\xe2", b"\xe2\x82", b"\xf0", b"\xf0\x9f", b"\xf0\x9f\x98"]


def adversarial(positions, total, tails=TAILS):
    """Each defect and each edge case at each position in a message of about
    `total` bytes, among ASCII or among 2-byte characters; and messages that
    end in a sequence cut short, that end at each position."""
    for fill in FILL.values():
        for seq in BAD + GOOD:
            for pos in positions:
                for tail in tails:
                    yield fill(pos) + seq + fill(max(0, total - pos - len(seq))) + tail
        for seq in CUT:
            for pos in positions:
                yield fill(pos) + seq


def test_the_reference_agrees_with_python():
    rnd = random.Random(81)
    cases = list(adversarial(range(0, 70, 3), 80))
    cases += [random_text(rnd, invalid=rnd.random() < 0.5) for _ in range(3000)]
    for data in cases:
        assert (first_error(data) is None) == is_utf8(data), data
    # the adversarial set has both kinds, and defects of each kind
    kinds = [first_error(d) for d in cases]
    assert sum(k is None for k in kinds) > 1000
    assert sum(k is not None and k < len(d) for k, d in zip(kinds, cases)) > 1000
    assert sum(k == len(d) for k, d in zip(kinds, cases)) > 100


def check_whole(data, mask, unmask, valid=None):
    masked = mask_bytes(data, mask)
    if valid is None:
        valid = first_error(data) is None
    if valid:
        assert unmask(masked, mask) == data
    else:
        with pytest.raises(ValueError, match="not valid UTF-8"):
            unmask(masked, mask)


@functools.lru_cache(maxsize=None)
def whole_cases():
    """(text, mask, valid): each defect at every offset 0..160 of a ~200-byte
    message, and at the edges of 4 KiB (where the errors are looked at);
    the same for every level."""
    rnd = random.Random(82)
    cases = [(data, bytes(rnd.randrange(256) for _ in range(4)))
             for data in adversarial(range(0, 161), 200)]
    cases += [(data, b"\x01\x02\x03\x04")
              for data in adversarial(list(range(4090, 4100)) + list(range(8186, 8196)), 8300)]
    return [(data, mask, is_utf8(data)) for data, mask in cases]


def test_whole_buffers_at_every_offset_near_block_edges(level):
    """Unmasked and validated in one call (the fused path when there are 64
    bytes or more)."""
    unmask = _core._websocket_unmask_validate
    cases = whole_cases()
    for data, mask, valid in cases:
        check_whole(data, mask, unmask, valid)
    assert len(cases) > 30000


@functools.lru_cache(maxsize=None)
def random_cases():
    rnd = random.Random(83)
    cases = []
    for i in range(6000):
        data = random_text(rnd, invalid=rnd.random() < 0.5)
        if i % 3 == 0:
            data = data[:rnd.randrange(0, 200)]
        elif i % 3 == 1:
            data = data * rnd.randrange(2, 30)
        cases.append((data, bytes(rnd.randrange(256) for _ in range(4)), is_utf8(data)))
    return cases


def test_random_text_every_length(level):
    """Random text of every sequence length, one defect in half of them,
    with lengths around the block sizes."""
    unmask = _core._websocket_unmask_validate
    for data, mask, valid in random_cases():
        check_whole(data, mask, unmask, valid)
    # long runs of ASCII with one non-ASCII byte or sequence at every place
    # of a 64-byte step (the ASCII fast path, and its way out)
    base = bytearray(b"x" * 300)
    for pos in range(0, 300):
        for seq in (b"\xc3\xa9", b"\xa9", b"\xe2\x82", b"\xf0\x9f\x98\x80"):
            data = bytes(base[:pos]) + seq + bytes(base[pos + len(seq):])
            check_whole(data, b"\x9a\x00\xff\x35", unmask)


def test_levels_unmask_binary_alike(level):
    """Unmasking alone (binary frames, control frames): every length and
    mask offset the reader hands it, through the frame reader."""
    rnd = random.Random(84)

    async def go():
        loop = asyncio.get_running_loop()
        for n in list(range(0, 140)) + [255, 256, 1000, 4097]:
            payload = bytes(rnd.randrange(256) for _ in range(n))
            wire = frame(0x2, payload, mask=bytes(rnd.randrange(256) for _ in range(4)))
            ws = _core.WebSocket(loop)
            t = FakeTransport()
            ws.attach(t, b"")
            cut = rnd.randrange(0, len(wire) + 1)
            ws.data_received(wire[:cut])
            ws.data_received(wire[cut:])
            assert await ws.recv() == payload
            ws.connection_lost(None)

    asyncio.run(go())


def payload_positions(wire_frames):
    """The wire offset of each payload byte of a list of (header, payload)
    frames, and the wire offset of the last byte of the last frame."""
    where, off = [], 0
    for head_len, n in wire_frames:
        off += head_len
        where.extend(range(off, off + n))
        off += n
    return where, off - 1


def header_len(n):
    return 2 + 4 + (0 if n < 126 else 2 if n < 65536 else 8)


def feed_and_check(loop, data, wire, reads, expect_fail_at):
    """Feeds wire in the given reads; with a defect, the close frame must
    appear in the read holding wire offset expect_fail_at, not before."""
    ws = _core.WebSocket(loop)
    t = FakeTransport()
    ws.attach(t, b"")
    pos = 0
    for r in reads:
        ws.data_received(wire[pos:pos + r])
        end = pos + r
        if expect_fail_at is not None:
            if expect_fail_at < end:
                assert t.written[:1] == b"\x88" and bytes(t.written[2:4]) == b"\x03\xef", (
                    data, reads, expect_fail_at, bytes(t.written))
                ws.connection_lost(None)
                return None
            assert not t.written, (data, reads, expect_fail_at, pos)
        pos = end
    assert expect_fail_at is None
    return ws


def test_every_split_point_across_frames_and_reads(level):
    """Defects and edge cases near the 32/64-byte edges, in a ~130-byte
    message cut at every point: into two frames fed in one read, and as one
    frame fed in two reads (the second read's mask offset is then any
    value mod 4).  Valid text arrives whole; invalid text is refused with
    1007 in the read that brings its first bad byte (or the message's last
    byte, for a sequence cut short by the end)."""
    rnd = random.Random(85)

    async def go():
        loop = asyncio.get_running_loop()
        count = 0
        for data in adversarial((31, 62, 95), 130, tails=(b"",)):
            err = first_error(data)
            n = len(data)
            for s in range(n + 1):
                # two frames, one read
                parts = (data[:s], data[s:])
                wire = frame(TEXT, parts[0], fin=False) + frame(CONT, parts[1])
                where, last = payload_positions(
                    [(header_len(len(p)), len(p)) for p in parts])
                fail_at = None if err is None else (last if err == n else where[err])
                ws = feed_and_check(loop, data, wire, [len(wire)], fail_at)
                if ws is not None:
                    assert await ws.recv() == data.decode()
                    ws.connection_lost(None)
                # one frame, two reads cut at payload byte s
                wire = frame(TEXT, data, mask=bytes(rnd.randrange(256) for _ in range(4)))
                h = header_len(n)
                fail_at = None if err is None else (len(wire) - 1 if err == n else h + err)
                ws = feed_and_check(loop, data, wire, [h + s, len(wire) - h - s], fail_at)
                if ws is not None:
                    assert await ws.recv() == data.decode()
                    ws.connection_lost(None)
                count += 1
        assert count > 30000

    asyncio.run(go())


def test_random_text_random_reads_fail_in_the_right_read(level):
    """Random text (some long) in random fragments and random reads: the
    1007 comes in the read with the first bad byte."""
    rnd = random.Random(86)

    async def go():
        loop = asyncio.get_running_loop()
        for i in range(800):
            data = random_text(rnd, invalid=rnd.random() < 0.6)
            if rnd.random() < 0.4:
                data = data * rnd.randrange(2, 20)
            err = first_error(data)
            cuts = sorted(rnd.sample(range(len(data) + 1), min(len(data) + 1, rnd.randrange(1, 5))))
            parts = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
            wire = b"".join(frame(TEXT if k == 0 else CONT, p, fin=k == len(parts) - 1,
                                  mask=bytes(rnd.randrange(256) for _ in range(4)))
                            for k, p in enumerate(parts))
            where, last = payload_positions([(header_len(len(p)), len(p)) for p in parts])
            fail_at = None if err is None else (last if err == len(data) else where[err])
            reads, left = [], len(wire)
            while left:
                r = min(left, rnd.choice([1, 7, 63, 64, 65, 200, 1000, 5000]))
                reads.append(r)
                left -= r
            ws = feed_and_check(loop, data, wire, reads, fail_at)
            if ws is not None:
                assert await ws.recv() == data.decode()
                ws.connection_lost(None)

    asyncio.run(go())


def deflated(data):
    z = zlib.compressobj(wbits=-15)
    return (z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH))[:-4]


def test_compressed_text_is_validated_alike(level):
    """Inflated text goes through the validator without the unmasking (the
    same blocks, fed in the inflater's pieces)."""
    rnd = random.Random(87)

    async def go():
        loop = asyncio.get_running_loop()
        cases = list(adversarial((0, 31, 33, 63, 64, 65, 127), 200))
        cases += [random_text(rnd, invalid=rnd.random() < 0.5) * rnd.randrange(1, 40)
                  for _ in range(300)]
        for data in cases:
            ws = _core.WebSocket(loop, deflate=(0, 0, 15, 15))
            t = FakeTransport()
            ws.attach(t, b"")
            ws.data_received(frame(TEXT, deflated(data), rsv=4))
            if first_error(data) is None:
                assert await ws.recv() == data.decode()
            else:
                assert t.written[:1] == b"\x88" and bytes(t.written[2:4]) == b"\x03\xef"
            ws.connection_lost(None)

    asyncio.run(go())


def test_the_level_hook():
    assert BEST in LEVELS
    try:
        assert _core._websocket_simd("scalar") == "scalar"
        assert _core._websocket_simd() == "scalar"
        # never more than the CPU has
        assert _core._websocket_simd("avx2") == BEST
    finally:
        _core._websocket_simd(BEST)
    with pytest.raises(ValueError, match="'avx2', 'ssse3' or 'scalar'"):
        _core._websocket_simd("avx512")
    with pytest.raises(TypeError):
        _core._websocket_simd(2)
    with pytest.raises(TypeError):
        _core._websocket_simd("avx2", "ssse3")
