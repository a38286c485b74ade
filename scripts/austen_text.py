#!/usr/bin/env python3
"""Extract Jane Austen's novels as plain text from the janeaustenr R
package's lazy-load database (data/Rdata.rdb), without R.

The .rdb file is a sequence of records, each a 4-byte big-endian length
(of the uncompressed data) followed by a zlib stream. Every record is an R
object serialized in XDR format ("X\\n", version 2 or 3). The novels are
character vectors (STRSXP) of lines; this script implements just enough
of R's unserialize to read those and skips records it cannot read.

usage: austen_text.py Rdata.rdb OUTDIR
"""
import struct
import sys
import zlib
from pathlib import Path

STRSXP = 16
CHARSXP = 9
NA_LENGTH = -1
HAS_ATTR = 1 << 9
HAS_TAG = 1 << 10

# First distinctive words of each novel -> output file name.
NOVELS = {
    "SENSE AND SENSIBILITY": "sense.txt",
    "PRIDE AND PREJUDICE": "pride.txt",
    "MANSFIELD PARK": "mansfield.txt",
    "EMMA": "emma.txt",
    "NORTHANGER ABBEY": "northanger.txt",
    "PERSUASION": "persuasion.txt",
}


class Unsupported(Exception):
    """An R object type this minimal reader does not handle."""


def records(data):
    """Yields the decompressed records of an .rdb file."""
    pos = 0
    while pos + 4 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        d = zlib.decompressobj()
        out = d.decompress(data[pos + 4:])
        if len(out) != length:
            raise ValueError(f"record at {pos}: expected {length} bytes, got {len(out)}")
        consumed = len(data) - pos - 4 - len(d.unused_data)
        yield pos, out
        pos += 4 + consumed


class XdrReader:
    def __init__(self, buf):
        self.buf = buf
        self.pos = 0

    def int(self):
        (v,) = struct.unpack(">i", self.buf[self.pos:self.pos + 4])
        self.pos += 4
        return v

    def bytes(self, n):
        if self.pos + n > len(self.buf):
            raise ValueError("truncated")
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def header(self):
        if self.bytes(2) != b"X\n":
            raise Unsupported("not XDR serialization")
        version = self.int()
        self.int()  # R version that wrote it
        self.int()  # minimal R version to read it
        if version == 3:
            self.bytes(self.int())  # native encoding name
        elif version != 2:
            raise Unsupported(f"serialization version {version}")

    def charsxp(self):
        flags = self.int()
        if flags & 0xFF != CHARSXP:
            raise Unsupported(f"expected CHARSXP, got type {flags & 0xFF}")
        n = self.int()
        if n == NA_LENGTH:
            return None
        # Encoding flags (UTF-8 / latin1 / bytes) live in the levels; the
        # janeaustenr strings are UTF-8 or ASCII.
        return self.bytes(n).decode("utf-8", errors="replace")

    def strsxp(self):
        flags = self.int()
        if flags & 0xFF != STRSXP:
            raise Unsupported(f"type {flags & 0xFF}")
        n = self.int()
        return [self.charsxp() for _ in range(n)]


def character_vector(rec):
    r = XdrReader(rec)
    r.header()
    return r.strsxp()


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    rdb, outdir = Path(sys.argv[1]), Path(sys.argv[2])
    outdir.mkdir(parents=True, exist_ok=True)
    found = {}
    for pos, rec in records(rdb.read_bytes()):
        try:
            lines = character_vector(rec)
        except (Unsupported, ValueError, struct.error):
            continue
        first = next((l.strip() for l in lines if l and l.strip()), "")
        for title, name in NOVELS.items():
            if first.upper() == title and name not in found:
                text = "\n".join("" if l is None else l for l in lines) + "\n"
                (outdir / name).write_text(text, encoding="utf-8")
                found[name] = len(text.encode("utf-8"))
    missing = sorted(set(NOVELS.values()) - set(found))
    if missing:
        sys.exit(f"austen_text.py: novels not found in {rdb}: {', '.join(missing)}")
    for name, size in sorted(found.items()):
        print(f"{outdir / name}\t{size} bytes")


if __name__ == "__main__":
    main()
