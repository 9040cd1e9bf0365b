"""oresearcher.hugepages: when a command re-executes itself with glibc's huge-page tunable, and that the re-executed
process really takes far fewer page faults on XLA's fresh buffers."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from oresearcher import hugepages

REPO = Path(__file__).resolve().parents[1]


def test_thp_mode_reads_the_bracketed_choice(tmp_path):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert hugepages.thp_mode(str(f)) == "madvise"
    f.write_text("[always] madvise never\n")
    assert hugepages.thp_mode(str(f)) == "always"
    assert hugepages.thp_mode(str(tmp_path / "missing")) == ""


def test_environment_decides_when_to_re_execute():
    env = {"PATH": "/bin", "ORESEARCHER_HUGEPAGES": "1"}
    on = lambda environ, platform="linux", mode="madvise", accelerator=False: hugepages.environment(
        environ, platform, mode, accelerator)
    assert on(env) == {**env, "GLIBC_TUNABLES": hugepages.TUNABLE}
    # other tunables are kept, ours is appended
    assert on({**env, "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})["GLIBC_TUNABLES"] == \
        "glibc.malloc.arena_max=2:" + hugepages.TUNABLE
    assert on({"PATH": "/bin"}) is None                                   # opt-in: off unless asked
    assert on({**env, "ORESEARCHER_HUGEPAGES": "0"}) is None
    assert on(env, accelerator=True) is None                              # a GPU or TPU host: never
    assert on(env, platform="darwin") is None                             # not glibc
    assert on(env, mode="never") is None                                  # no huge pages at all
    assert on(env, mode="always") is None                                 # already huge
    assert on(env, mode="") is None                                       # no THP in this kernel
    assert on({**env, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None


def test_accelerator_hosts_are_recognised(tmp_path):
    node = tmp_path / "nvidiactl"
    assert hugepages.accelerator_host({}, nodes=(str(tmp_path / "none"),)) is False
    node.write_text("")
    assert hugepages.accelerator_host({}, nodes=(str(node),)) is True
    assert hugepages.accelerator_host({"JAX_PLATFORMS": "cpu"}, nodes=(str(node),)) is False   # forced to CPU
    assert hugepages.accelerator_host({"JAX_PLATFORMS": "tpu"}, nodes=()) is True
    assert hugepages.accelerator_host({"JAX_PLATFORMS": "cuda,cpu"}, nodes=()) is True


_PROBE = """
import os, sys
print("start", sys.argv[1:], flush=True)
from oresearcher import hugepages
hugepages.enable()
print("tunables", os.environ.get("GLIBC_TUNABLES"), flush=True)
"""


def test_enable_re_executes_once_with_the_same_arguments():
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "ORESEARCHER_HUGEPAGES")}
    run = lambda env: subprocess.run([sys.executable, "-c", _PROBE, "a", "--b=1"], cwd=REPO, env=env,
                                     capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    assert run(env) == ["start ['a', '--b=1']", "tunables None"]      # not asked for: runs once, untouched
    out = run({**env, "ORESEARCHER_HUGEPAGES": "1", "JAX_PLATFORMS": "cpu"})
    if hugepages.thp_mode() == "madvise":
        assert out == ["start ['a', '--b=1']", "start ['a', '--b=1']", f"tunables {hugepages.TUNABLE}"]
    else:  # this kernel has no madvise mode: nothing to gain, the command runs once, untouched
        assert out == ["start ['a', '--b=1']", "tunables None"]


_FAULTS = """
import resource, sys
from oresearcher import hugepages
hugepages.enable()
import jax, jax.numpy as jnp
double = jax.jit(lambda x: x * 2.0)
x = jnp.ones((64, 1024, 1024), jnp.float32)       # 256 MB
double(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    double(x).block_until_ready()                 # a fresh 256 MB output buffer every call
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(hugepages.thp_mode() != "madvise", reason="the kernel's THP mode is not madvise")
def test_huge_pages_cut_the_page_faults_of_fresh_xla_buffers():
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    faults = {}
    for flag in ("0", "1"):
        out = subprocess.run([sys.executable, "-c", _FAULTS], cwd=REPO,
                             env={**env, "ORESEARCHER_HUGEPAGES": flag, "JAX_PLATFORMS": "cpu"},
                             capture_output=True, text=True, timeout=120, check=True).stdout
        faults[flag] = int(out.split()[-1])
    assert faults["0"] > 3 * 256 * 1024 // 4 // 2   # 4 KB pages: about one fault per page of each output
    assert faults["1"] * 10 < faults["0"], faults
