"""The training entry point for every stage.

    python -m oresearcher.train --config=configs/sft.py:tiny --config.workdir=/tmp/sft --config.total_steps=10
    python -m oresearcher.train --config=configs/rl.py

`config.stage` picks the loop: "sft" -> oresearcher.sft.run, "rl" -> oresearcher.rl.train.run. Any config key can
be overridden with --config.key=value. Exit status: 0 when the run finished or was stopped by SIGTERM after saving
a checkpoint (resume by running the same command); 1 with a one-line reason on bad data or a NaN/Inf loss.
"""
from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<stage>.py[:preset]", lock_config=False)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint phase at INFO
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config=configs/sft.py[:preset] is required")
    stage = config.get("stage", "")
    if stage == "sft":
        from oresearcher import sft
        from oresearcher.preemption import NonFiniteError
        from oresearcher.data.records import BadRecord
        try:
            sft.run(config)
        except (BadRecord, NonFiniteError) as e:
            print(f"oresearcher.train: {e}", file=sys.stderr, flush=True)
            sys.exit(1)
    elif stage == "rl":
        from oresearcher.rl import train as rl_train
        rl_train.run(config)
    else:
        raise app.UsageError(f"config.stage={stage!r}: expected 'sft' or 'rl'")


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
