"""Hostile: writes a 20 MB file in its working folder at import (over the 16 MB file-size limit)."""

with open("big.bin", "wb") as f:
    for _ in range(20):
        f.write(b"\0" * 2**20)
