r"""Distils a dataset with any method of `ddjax.distill`, then evaluates the result.

    python -m launch.distill --config=configs/distill/dm.py:dataset=mnist5k,ipc=10 \
        --workdir=/tmp/ddjax/dm
    python -m launch.distill --config=configs/distill/dsa.py:dataset=cifar10,ipc=10 \
        --config.data_dir=~/tensorflow_datasets --workdir=/tmp/ddjax/dsa_c10

Writes config.json, metrics.jsonl, checkpoints/, distilled.npz (the portable distilled
set), results.json and synthetic.png to --workdir. Re-running with the same --workdir
resumes from its latest checkpoint (--restore=previous: from the newest intact one); a
workdir holding a run of another config is refused unless --overwrite, which moves that
run to <workdir>/previous/<n>/.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from launch import common

_CONFIG = config_flags.DEFINE_config_file("config", None, "Distillation config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for config, metrics, checkpoints and "
                               "the distilled set.")
_RESTORE, _OVERWRITE = common.define_workdir_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  common.setup()
  from ddjax.distill import driver  # pylint: disable=g-import-not-at-top
  result = common.run_reporting_errors(driver.run_distillation, _CONFIG.value, _WORKDIR.value,
                                       restore=_RESTORE.value, overwrite=_OVERWRITE.value)
  logging.info("Result: %s", result)
  line = (f"protocol_a={result['protocol_a_mean']:.4f}+-{result['protocol_a_std']:.4f}")
  if "dc_mean" in result:
    line += f" dc_protocol={result['dc_mean']:.4f}+-{result['dc_std']:.4f}"
  print(f"{line} ({result['method']} on {result['dataset']}, ipc {result['ipc']}, "
        f"{result['iterations']} iterations, {result['distill_seconds']:.1f} s); "
        f"distilled set in {result['distilled']}")


if __name__ == "__main__":
  app.run(main, flags_parser=common.parse_flags)
