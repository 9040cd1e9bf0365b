"""Transparent huge pages for the host memory XLA allocates, on Linux with glibc >= 2.35.

    from oresearcher import hugepages
    hugepages.enable()      # first thing in a command's main(): re-executes the command once, if it helps

Why: XLA:CPU allocates a step's temporaries afresh on every call (gigabytes for a training step), and glibc serves
blocks that large with new mmaps, so every step first-touches every page again: a SmolLM2 training step at
4 x 512 tokens takes ~1.3 M page faults on 4 KB pages. glibc's `glibc.malloc.hugetlb=1` tunable makes malloc ask
the kernel for transparent huge pages (2 MB) on those mmaps: ~3 k faults per step, and the step takes 12.0-12.3 s
instead of 12.7-13.4 s on a 2-core VM. Tunables are read only when a process starts, hence the re-execution.

Nothing happens where it cannot help: not Linux, the kernel's THP mode is `never` (no huge pages) or `always`
(every large mmap gets them already), or GLIBC_TUNABLES already names the tunable (which also stops a second
re-execution). ORESEARCHER_HUGEPAGES=0 turns it off. Child processes inherit the setting through the environment.
"""
from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode(path: str = _THP_MODE) -> str:
    """The kernel's transparent-huge-page mode: "always", "madvise", "never", or "" where there is none."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return ""
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else ""


def environment(environ=os.environ, platform: str = sys.platform, mode: str | None = None) -> dict | None:
    """The environment to re-execute with, or None when this process should go on as it is."""
    if platform != "linux" or environ.get("ORESEARCHER_HUGEPAGES", "1") == "0":
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables:
        return None
    if (thp_mode() if mode is None else mode) != "madvise":
        return None
    return {**environ, "GLIBC_TUNABLES": f"{tunables}:{TUNABLE}" if tunables else TUNABLE}


def enable() -> None:
    """Re-execute this command (same interpreter, same arguments) with the tunable set, where that helps.
    Call it before the command starts threads or does work: nothing after it runs twice."""
    env = environment()
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
