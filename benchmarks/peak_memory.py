"""Peak memory of one setting, for benchmarks that run each setting in a fresh process.

On Linux the peak resident set size (VmHWM) can be reset, so a child measures only what
inference adds after its models are built; on CUDA the allocator's peak is read instead.
"""

from __future__ import annotations

import resource


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def reset_peak_rss() -> bool:
    """Linux resets the peak resident set size (VmHWM) on writing 5 to clear_refs."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
