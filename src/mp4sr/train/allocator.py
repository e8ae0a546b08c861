"""Keep freed memory in the process instead of returning it to the system after every step.

A training step on the CPU allocates tensors of tens to hundreds of MB (the scores of a batch against
every item, their gradients). glibc's malloc serves each allocation that large with a fresh ``mmap``
and returns it with ``munmap`` when freed, so every step touches its memory again page by page: on
``amazon-scientific-mm`` about a fifth of the training time went to those page faults (system time).
With blocks up to 32 MiB (glibc's largest threshold) served from the heap, and the heap trimmed only
when more than 1 GiB at its top is free, the next step reuses the freed blocks; larger blocks are
still mapped and returned one by one.

The cost is that the process may keep up to 1 GiB of freed memory until it exits.
``MP4SR_MALLOC=default`` leaves glibc's settings alone. Without glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

ENV = "MP4SR_MALLOC"
# mallopt's parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # the largest glibc accepts on 64-bit systems
TRIM_THRESHOLD = 2**30

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Tell glibc to serve blocks up to 32 MiB from the heap and to keep freed memory; once per process.

    Returns whether the settings are in effect (False when ``$MP4SR_MALLOC`` is ``default`` or the C
    library is not glibc).
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(ENV, "").strip().lower() in {"default", "off", "0", "false", "no"}:
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # no C library to load, or one without mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = all(mallopt(option, value) == 1 for option, value in
                   ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)))
    if not _applied:
        log.debug("mallopt refused the settings; glibc's defaults stay")
    return _applied
