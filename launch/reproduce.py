r"""The whole paper from scratch on one dataset: experts, distillation, analyses, report.

    python -m launch.reproduce --config=configs/reproduce.py:dataset=mnist5k,size=demo \
        --workdir=workdirs/demo                       # `make demo`: <= 30 min on 2 CPU cores
    python -m launch.reproduce --config=configs/reproduce.py:dataset=cifar10,size=paper \
        --config.data_dir=~/tensorflow_datasets --workdir=/tmp/ddjax/repro_c10   # a GPU

Writes <workdir>/report.md (every figure, distilled-set accuracies, the computed claim
table, stage timings), <workdir>/claims.json, and each stage's outputs (experts/,
distill/<method>/, analysis/). Re-running the same command resumes: finished stages are
skipped. configs/reproduce.py documents every setting and each demo-size cut.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from launch import common

_CONFIG = config_flags.DEFINE_config_file("config", None, "Reproduction config "
                                          "(configs/reproduce.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for every stage and the report.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  common.setup()
  from ddjax.analysis import reproduce  # pylint: disable=g-import-not-at-top
  try:  # (a ReproductionConfigError is a DdjaxError: run_reporting_errors reports it)
    summary = common.run_reporting_errors(reproduce.run_reproduction, _CONFIG.value,
                                          _WORKDIR.value)
  except reproduce.ReproductionIncomplete as e:
    logging.error("ReproductionIncomplete: %s", e)
    sys.exit(f"error: incomplete reproduction: {e}")
  counts = summary["claims"]
  done = sum(r["reproduced"] for r in counts)
  print(f"{done} of {len(counts)} claims reproduced; report in {summary['report']}")


if __name__ == "__main__":
  app.run(main, flags_parser=common.parse_flags)
