"""One lock around every Triton kernel launch.

The first launch of a kernel specialisation JIT-compiles it, and Triton's
compilation and caching are not safe against two threads compiling at once.
aribbps runs lane groups (``aribbps/lane_groups.py``) in concurrent threads,
so launches take this lock. A launch only queues work on the GPU, so the
lock is held for microseconds, except while a kernel compiles.
"""
from __future__ import annotations

import threading

LAUNCH_LOCK = threading.Lock()
