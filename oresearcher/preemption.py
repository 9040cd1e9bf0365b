"""Stopping a run cleanly: SIGTERM (preemptible TPU VMs, spot GPUs, `kill`) and non-finite losses.

    guard = PreemptionGuard()                   # installs a SIGTERM handler that only sets a flag
    for step in ...:
        metrics = train_step(...)
        check_finite(step, metrics)             # NaN/Inf -> NonFiniteError before anything is saved
        if guard.should_stop(): save checkpoint; exit 0

The handler never saves by itself: a signal can arrive in the middle of a jitted step or an orbax write, so
the loop looks at the flag between steps, saves a consistent state and returns. Exit status 0 tells a
scheduler the job ended on purpose and can be resumed from its workdir.

On a multi-host job a scheduler may signal one host only (a preempted VM) or the hosts at slightly different
times; `should_stop` is agreed by all processes at every step boundary, so they all save the same step together
(the save is collective: a host saving alone would wait for the others forever).
"""
from __future__ import annotations

import math
import signal


class NonFiniteError(RuntimeError):
    """A loss or gradient norm became NaN/Inf; the last checkpoint written before it is still the latest."""


class PreemptionGuard:
    def __init__(self, signals=(signal.SIGTERM,)):
        self.stop_requested = False
        self.signal_name = ""
        self._previous = {}
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.stop_requested = True
        self.signal_name = signal.Signals(signum).name

    def should_stop(self) -> bool:
        """True on every process when any process has been signalled. Call it at each step boundary on every
        process (all of them exchange their flags). Why an exchange of the flag and not JAX's preemption sync
        point (multihost_utils.reached_preemption_sync_point): that service catches SIGTERM in the coordination
        agent itself, needs jax_enable_preemption_service and does not exist in a single-process run, while one
        tiny exchange per step (through the coordination service: milliseconds, against steps of seconds to
        minutes) works the same on CPU, GPU and TPU, with one process or many, and stops at the step being
        started."""
        from oresearcher import multihost

        stop = multihost.any_process(self.stop_requested)
        if stop and not self.stop_requested:
            self.signal_name = "stop request from another process"
        return stop

    def restore_handlers(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def check_finite(step: int, metrics: dict, keys=("loss", "grad_norm")) -> None:
    """Raise NonFiniteError naming the step and the values if any of `keys` is NaN or Inf."""
    bad = {k: float(metrics[k]) for k in keys if k in metrics and not math.isfinite(float(metrics[k]))}
    if bad:
        shown = ", ".join(f"{k}={v}" for k, v in bad.items())
        raise NonFiniteError(f"step {step}: non-finite {shown}. This state was not checkpointed; lower "
                             "optim.lr or check the data, then resume from the last good checkpoint.")
