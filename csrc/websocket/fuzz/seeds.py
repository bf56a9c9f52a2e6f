"""Writes a seed corpus for the websocket fuzz harness into argv[1]: valid
client frame sequences (plain and compressed), and extension offers."""
import os
import sys
import zlib


def frame(opcode, payload, fin=True, rsv=0, mask=b"\x11\x22\x33\x44"):
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    if n < 126:
        head = bytes([b0, 0x80 | n])
    elif n < 65536:
        head = bytes([b0, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([b0, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def deflated(data):
    z = zlib.compressobj(wbits=-15)
    return (z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH))[:-4]


def main(out):
    os.makedirs(out, exist_ok=True)
    text = "héllo wörld 😀 ".encode() * 20
    z = deflated(text)
    seeds = {
        "plain": b"\x00\x00" + frame(1, b"hello") + frame(2, b"\x00\xff" * 70)
        + frame(1, b"fr", fin=False) + frame(9, b"p") + frame(0, b"ag")
        + frame(8, b"\x03\xe8bye"),
        "split": b"\x00\x07" + frame(1, text) + frame(10, b"") + frame(2, b"x" * 300),
        "deflate": b"\x40\x03" + frame(1, z, rsv=4) + frame(2, deflated(b"\0" * 5000), rsv=4),
        "deflate-frag": b"\x43\x05" + frame(1, z[:3], fin=False, rsv=4) + frame(0, z[3:])
        + frame(8, b""),
        "small-bound": b"\xc0\x02" + frame(2, deflated(b"a" * 1000), rsv=4),
        "utf8": b"\x00\x05" + "Grüße, 世界! Ça va? 😀 ".encode() * 8 + b"\xed\xa0\x80"
        + "ok € ".encode() * 20,
        # long text for the SIMD blocks: sequences across 32/64-byte edges,
        # a run of ASCII, and defects past the first blocks
        "utf8-long": b"\x00\x11" + "Grüße, 世界! Ça va? 😀 ".encode() * 40 + b"a" * 200
        + "€𝄞".encode() * 30,
        "utf8-long-bad": b"\x00\x20" + "é".encode() * 100 + b"\xf4\x90\x80\x80"
        + b"x" * 130 + b"\xe2\x82",
        "frames-long-text": b"\x00\x40" + frame(1, "Ça va? 😀 ".encode() * 50, fin=False)
        + frame(0, "€".encode() * 200),
        "offers": b"\x00\x00permessage-deflate; client_max_window_bits; "
        b"server_max_window_bits=10, permessage-deflate; server_no_context_takeover",
    }
    for name, data in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main(sys.argv[1])
