"""Transparent huge pages for the host memory XLA:CPU allocates (opt-in: ORESEARCHER_HUGEPAGES=1), Linux/glibc.

    from oresearcher import hugepages
    hugepages.enable()      # first thing in a command's main(): re-executes the command once, if asked and useful

Why: XLA:CPU allocates a step's temporaries afresh on every call (gigabytes for a training step), and glibc serves
blocks that large with new mmaps, so every step first-touches every page again (about one page fault per 4 KB).
glibc's `glibc.malloc.hugetlb=1` tunable makes malloc ask the kernel for transparent huge pages (2 MB) on those
mmaps, which removes almost all of those faults (tests/test_hugepages.py counts them) and shortens CPU training
steps by a few percent. Tunables are read only when a process starts, hence the re-execution.

It only concerns models computed on the host CPU, so it is off unless ORESEARCHER_HUGEPAGES=1, and even then
nothing happens where it cannot help: an accelerator host (a GPU or TPU device node, or JAX_PLATFORMS naming
something other than cpu), not Linux, the kernel's THP mode `never` or `always`, or GLIBC_TUNABLES already naming
the tunable (which also stops a second re-execution). Child processes inherit the setting through the environment.
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


# device nodes of NVIDIA GPUs and of TPUs (v4 and later: /dev/accel*, v2/v3 and some VMs: /dev/vfio)
_ACCELERATOR_NODES = ("/dev/nvidiactl", "/dev/accel0", "/dev/vfio/0")


def accelerator_host(environ=os.environ, nodes=_ACCELERATOR_NODES) -> bool:
    """True where JAX will compute on an accelerator: JAX_PLATFORMS names one, or a GPU/TPU device node exists."""
    platforms = environ.get("JAX_PLATFORMS", "")
    if platforms:
        return any(p.strip() not in ("", "cpu") for p in platforms.split(","))
    return any(os.path.exists(n) for n in nodes)


def environment(environ=os.environ, platform: str = sys.platform, mode: str | None = None,
                accelerator: bool | None = None) -> dict | None:
    """The environment to re-execute with, or None when this process should go on as it is."""
    if platform != "linux" or environ.get("ORESEARCHER_HUGEPAGES", "0") != "1":
        return None
    if accelerator_host(environ) if accelerator is None else accelerator:
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
