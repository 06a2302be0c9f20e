#!/usr/bin/env python3
"""Checks the pattern the probe's `probe=blk` program writes into a disk image.

The probe fills sectors 64..64+2048 (1 MiB from byte 32768) so that each
512-byte sector holds the 8-byte little-endian value
    sector_number ^ 0x5a5a5a5a5a5a5a5a
64 times. This script checks that layout in the image file (or block
device) and, with --header, that the image starts with the header the test
wrote (the probe prints its first 16 bytes as `probe: blk head=...`).

    python3 bench/blk/verify_pattern.py IMAGE [--header FERROVISOR-DISK!]

Exit status 0 if everything matches, 1 with the first bad sector otherwise.
Python 3 standard library only; the logic is small enough to port into the
VMM's tests.
"""

import argparse
import struct
import sys

SECTOR = 512
PATTERN_SECTOR = 64
PATTERN_SECTORS = 2048
PATTERN_XOR = 0x5A5A5A5A5A5A5A5A


def expected_sector(sector):
    """The 512 bytes the probe writes into `sector`."""
    return struct.pack("<Q", sector ^ PATTERN_XOR) * (SECTOR // 8)


def check(image, first=PATTERN_SECTOR, count=PATTERN_SECTORS, header=None):
    """Returns None if the image holds the pattern (and header), else a
    description of the first mismatch."""
    with open(image, "rb") as f:
        if header is not None:
            got = f.read(len(header))
            if got != header:
                return f"header is {got!r}, want {header!r}"
        f.seek(first * SECTOR)
        data = f.read(count * SECTOR)
    if len(data) != count * SECTOR:
        return f"image ends before sector {first + count} ({len(data)} of {count * SECTOR} bytes)"
    for i in range(count):
        sector = first + i
        got = data[i * SECTOR:(i + 1) * SECTOR]
        want = expected_sector(sector)
        if got != want:
            word = next(j for j in range(0, SECTOR, 8) if got[j:j + 8] != want[j:j + 8])
            return (f"sector {sector} (byte {sector * SECTOR + word}): "
                    f"{got[word:word + 8].hex()} want {want[word:word + 8].hex()}")
    return None


def main():
    ap = argparse.ArgumentParser(description="check the probe's blk pattern in a disk image")
    ap.add_argument("image")
    ap.add_argument("--header", help="text the image must start with (e.g. FERROVISOR-DISK!)")
    ap.add_argument("--first", type=int, default=PATTERN_SECTOR, help="first sector (64)")
    ap.add_argument("--count", type=int, default=PATTERN_SECTORS, help="sectors (2048)")
    args = ap.parse_args()
    header = args.header.encode() if args.header is not None else None
    problem = check(args.image, args.first, args.count, header)
    if problem:
        print(f"verify_pattern: {args.image}: {problem}", file=sys.stderr)
        return 1
    print(f"verify_pattern: {args.image}: sectors {args.first}..{args.first + args.count} "
          f"hold the pattern" + (" and the header matches" if header else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
