"""Give freed memory back to the OS: a fixed glibc mmap threshold for the sidecar process.

Why: glibc raises its mmap threshold dynamically (up to 32 MiB) each time a large block is freed,
so after a client sends a few multi-MiB messages (the sidecar accepts up to `max_message_bytes`),
later large allocations come from the heap and stay in RSS after they are freed: measured here,
30 refused 4-8 MiB messages left the sidecar +82 MB. With the threshold fixed at 1 MiB (which also
turns off the dynamic adjustment), blocks of 1 MiB and more are mmapped and unmapped on free: the
same traffic leaves about +11 MB. Chunks of ordinary size (well below 1 MiB) are not affected.

A no-op where the C library is not glibc.

Also here: the container's memory limit (cgroup v1 or v2), from which the scoring queue's default
byte budget is derived (`default_queue_bytes`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from pathlib import Path

log = logging.getLogger(__name__)
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
DEFAULT_MMAP_THRESHOLD = 1 << 20


def bound_allocator_retention(threshold: int = DEFAULT_MMAP_THRESHOLD) -> bool:
    """Fix the mmap threshold (True when glibc accepted it)."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(M_MMAP_THRESHOLD, int(threshold)))
    if not ok:
        log.debug("mallopt(M_MMAP_THRESHOLD) refused; allocator retention unchanged")
    return ok


# -- the container's memory limit, and the scoring queue's byte budget derived from it ------------------
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: limits at or above this are "no limit" (cgroup v1 writes 2^63 rounded down to a page for unlimited)
_UNLIMITED = 1 << 60
#: the default byte budget of the scoring queue: this share of the container's memory limit ...
QUEUE_MEMORY_FRACTION = 0.25
QUEUE_BYTES_CAP = 1 << 30  # ... at most 1 GiB (queued chunks beyond that only add latency) ...
QUEUE_BYTES_FLOOR = 64 << 20  # ... at least 64 MiB (and never below two of the largest accepted messages) ...
QUEUE_BYTES_UNLIMITED = 512 << 20  # ... and this when there is no limit (or none can be read)


def _read_limit(path: Path) -> int | None:
    """A cgroup memory limit file's value in bytes; None for `max`, an unlimited value or no readable file."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text or text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        log.debug("unreadable cgroup memory limit %r in %s", text, path)
        return None
    return value if 0 < value < _UNLIMITED else None


def _own_cgroup_v2(proc_cgroup: Path) -> str | None:
    """This process's cgroup v2 path (`0::/kubepods/...`), when /proc/self/cgroup names one."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            return line[3:].strip().lstrip("/") or None
    return None


def container_memory_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> int | None:
    """The memory limit the kernel enforces on this container (bytes), or None when unlimited or unknown.

    cgroup v2: `memory.max` of this process's own cgroup (or the root of a namespaced one);
    cgroup v1: `memory/memory.limit_in_bytes`. A pod's `resources.limits.memory` lands here.
    """
    own = _own_cgroup_v2(proc_cgroup)
    candidates = [root / own / "memory.max"] if own else []
    candidates += [root / "memory.max", root / "memory" / "memory.limit_in_bytes"]
    for path in candidates:
        if path.exists():
            return _read_limit(path)
    return None


def default_queue_bytes(memory_limit: int | None, max_message_bytes: int) -> int:
    """The scoring queue's byte budget when `--queue-bytes` is not given (docs/deploy.md, "Limits").

    A quarter of the container's memory limit, capped at 1 GiB: queued chunks leave the rest of
    the limit to the process itself, the messages gRPC is still reading and the batch being
    scored, so a flood of maximum-size chunks is shed (RESOURCE_EXHAUSTED) instead of getting the
    pod OOM-killed (8 streams of 16 MB chunks used to add 2.2 GB, over the chart's limit).
    """
    floor = max(QUEUE_BYTES_FLOOR, 2 * max_message_bytes)
    if memory_limit is None:
        return max(floor, QUEUE_BYTES_UNLIMITED)
    return max(floor, min(QUEUE_BYTES_CAP, int(memory_limit * QUEUE_MEMORY_FRACTION)))
