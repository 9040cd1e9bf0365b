"""The training entry point for every stage.

    python -m oresearcher.train --config=configs/sft.py:tiny --config.workdir=/tmp/sft --config.total_steps=10
    python -m oresearcher.train --config=configs/rl.py

`config.stage` picks the loop: "sft" -> oresearcher.sft.run, "rl" -> oresearcher.rl.train.run. Any config key can
be overridden with --config.key=value. Exit status: 0 when the run finished or was stopped by SIGTERM after saving
a checkpoint (resume by running the same command); 1 with a one-line reason on bad data, a NaN/Inf loss or
checkpoints that cannot be restored (another model's, or all damaged); 2 for an unknown --config.KEY.

Multi-host: when the environment describes more than one process (JAX_COORDINATOR_ADDRESS +
JAX_NUM_PROCESSES + JAX_PROCESS_ID, a SLURM or Open MPI launch, or a multi-worker Cloud TPU slice), the
processes join one JAX program through `jax.distributed.initialize()` before anything touches a device.
ORESEARCHER_DISTRIBUTED=0 turns that off, =1 forces it. Every process computes the same metrics, so only
process 0 prints and writes them; the others report errors only, unless --log_all_processes.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<stage>.py[:preset]", lock_config=False)
_LOG_ALL = flags.DEFINE_bool("log_all_processes", False, "multi-host: every process prints its console lines "
                             "(default: process 0 only; the others print errors only)")


def _multi_process_environment(env=os.environ) -> bool:
    """True when this process is one of several that must form one JAX program."""
    forced = env.get("ORESEARCHER_DISTRIBUTED", "")
    if forced in ("0", "1"):
        return forced == "1"
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    for key in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if int(env.get(key, "1") or 1) > 1:
            return True
    return len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1


def main(argv):
    del argv
    if _multi_process_environment():
        import jax
        # Explicit JAX_* variables win; otherwise JAX reads SLURM, Open MPI or the TPU metadata server.
        # jax.devices() then spans every host.
        env = os.environ
        jax.distributed.initialize(
            coordinator_address=env.get("JAX_COORDINATOR_ADDRESS") or None,
            num_processes=int(env["JAX_NUM_PROCESSES"]) if env.get("JAX_NUM_PROCESSES") else None,
            process_id=int(env["JAX_PROCESS_ID"]) if env.get("JAX_PROCESS_ID") else None)
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint phase at INFO
    if _multi_process_environment() and not _LOG_ALL.value:
        import jax
        if jax.process_index() != 0:
            # N hosts would print every line N times; errors (stderr, absl ERROR) still come from every host
            sys.stdout = open(os.devnull, "w")
            logging.set_verbosity(logging.ERROR)
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config=configs/sft.py[:preset] is required")
    stage = config.get("stage", "")
    if stage not in ("sft", "rl"):
        raise app.UsageError(f"config.stage={stage!r}: expected 'sft' or 'rl'")
    from oresearcher.checkpoint import CheckpointError
    from oresearcher.data.records import BadRecord
    from oresearcher.preemption import NonFiniteError
    try:
        if stage == "sft":
            from oresearcher import sft
            sft.run(config)
        else:
            from oresearcher.rl import train as rl_train
            rl_train.run(config)
    except (BadRecord, NonFiniteError, CheckpointError) as e:
        print(f"oresearcher.train: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a one-line answer for a --config.KEY that the config does not have (ml_collections
    raises a bare AttributeError naming only the last part of the key)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"oresearcher.train: {e}\nPass --helpfull to see the flags.", file=sys.stderr)
        sys.exit(2)
    except (AttributeError, KeyError) as e:
        key = str(e).strip("\"'")
        given = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
        named = [a for a in given if key in a[len("--config."):].split(".")] or given
        print(f"oresearcher.train: unknown flag {named[0] if named else '--config.' + key}: the config has no key "
              f"{key!r}; check the spelling against the config file (--config.model_overrides.FIELD takes any "
              "field of oresearcher.model.ModelConfig)", file=sys.stderr)
        sys.exit(2)

if __name__ == "__main__":
    from oresearcher import hugepages
    hugepages.enable()  # re-executes once with huge pages for XLA's buffers (see oresearcher/hugepages.py)
    flags.mark_flag_as_required("config")
    app.run(main, flags_parser=parse_flags)
