"""Drops files from the page cache (posix_fadvise DONTNEED; no root needed): a cold start then
reads them from the disk again. Usage: python3 bench/evict.py <file or folder>..."""
import os
import sys

for arg in sys.argv[1:]:
    paths = [os.path.join(r, f) for r, _, fs in os.walk(arg) for f in fs] if os.path.isdir(arg) else [arg]
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
