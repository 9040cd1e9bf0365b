"""The synth service for RL: the configured `synth_url`, or a `python -m synth serve` subprocess on loopback.

    with synth_service(config) as url:       # "http://127.0.0.1:PORT"; the subprocess is stopped on exit
        ...

Clients send $SYNTH_TOKEN (oresearcher.synth_client); the subprocess inherits it, so it guards its routes with
the same token, and a service that refuses the token stops the run at start. The subprocess gets a free port,
its output goes to workdir/synth.log, and it is waited for on GET /healthz (building the embedded search index
takes a little while on first start).

Multi-host (`shared_synth_service`): process 0 starts the one subprocess, listening on every interface, and
sends the others its URL (this host's address as seen on the route to the JAX coordinator); every host then
makes the tool and judge calls of its own episodes there. Set $SYNTH_TOKEN on such a job: the service is then
reachable from the other hosts' network.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from oresearcher import synth_client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout_s: float, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"synth service exited with code {proc.returncode} before it was healthy; "
                               f"its log ({log}) ends with:\n{tail}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"synth service at {url} not healthy after {timeout_s:.0f}s; check it is running "
                       f"(or raise synth_start_timeout_s)")


def check_token(url: str) -> None:
    """Fail now, not with every tool call and judge call of a run, when the service refuses our token.
    An unknown job id answers 404 behind a valid token (or on an open service) and 401 without one."""
    resp = httpx.get(f"{url}/v1/jobs/token-check", headers=synth_client.auth_headers(), timeout=10.0)
    if resp.status_code == 401:
        state = "is not the service's token" if synth_client.auth_headers() else "is not set"
        raise RuntimeError(f"the synth service at {url} refuses this run: ${synth_client.TOKEN_ENV} {state}; "
                           f"set it to the token the service was started with")


def reachable_address(env=os.environ) -> str:
    """This host's address as the other hosts of a JAX job reach it: the interface on the route to the
    coordinator (JAX_COORDINATOR_ADDRESS), else the address of its hostname."""
    coordinator = env.get("JAX_COORDINATOR_ADDRESS", "").rpartition(":")[0].strip("[]")
    if coordinator:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:   # connect() on UDP sends nothing
            s.connect((coordinator, 9))
            return s.getsockname()[0]
    return socket.gethostbyname(socket.gethostname())


@contextlib.contextmanager
def shared_synth_service(config):
    """`synth_service` for a job of one process or many: with several processes and no synth_url, process 0 starts
    the service for all of them and stops it once every process is done with it."""
    import jax

    from oresearcher import multihost

    if jax.process_count() == 1 or config.get("synth_url"):
        with synth_service(config) as url:
            yield url
        return
    # hosts that reach the coordinator over loopback are one machine: the service stays on loopback there
    host = "127.0.0.1" if reachable_address().startswith("127.") else "0.0.0.0"
    if host == "0.0.0.0" and not synth_client.auth_headers():
        raise RuntimeError(f"multi-host RL: the synth service that process 0 starts must be reachable from the "
                           f"other hosts, and it refuses to serve the network without a token; set "
                           f"${synth_client.TOKEN_ENV} to the same secret on every host (or give synth_url)")
    with (synth_service(config, host=host) if multihost.is_primary() else contextlib.nullcontext()) as url:
        url = multihost.broadcast_object(url)
        if not multihost.is_primary():
            wait_healthy(url, float(config.get("synth_start_timeout_s", 600)))
        yield url
        # (not on an error: a host that failed would never reach it; process 0's exit then ends the others' calls)
        multihost.barrier("synth service: every host's last call is done")


@contextlib.contextmanager
def synth_service(config, host: str = "127.0.0.1"):
    """Yield the base URL of a healthy synth service (config.synth_url, or a subprocess started here listening
    on `host`: loopback, or "0.0.0.0" for the other hosts of a job, which then get this host's address)."""
    url = str(config.get("synth_url", "") or "").rstrip("/")
    timeout = float(config.get("synth_start_timeout_s", 600))
    if url:
        wait_healthy(url, timeout)
        check_token(url)
        yield url
        return
    port = free_port()
    log = Path(config.workdir) / "synth.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    synth_config = str(config.synth_config)
    path, _, preset = synth_config.partition(":")
    if Path(path).exists():      # resolve against the caller's directory: the subprocess runs from the repo root
        synth_config = str(Path(path).absolute()) + (f":{preset}" if preset else "")
    cmd = [sys.executable, "-m", "synth", "serve", f"--config={synth_config}", "--host", host,
           "--port", str(port)]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ),
                                cwd=str(Path(__file__).resolve().parents[2]))
    url = f"http://{'127.0.0.1' if host.startswith('127.') else reachable_address()}:{port}"
    try:
        wait_healthy(url, timeout, proc, log)
        check_token(url)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
