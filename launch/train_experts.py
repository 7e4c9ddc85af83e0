r"""Trains MTT expert trajectories into a buffer directory (resumable).

    python -m launch.train_experts --config=configs/experts.py:dataset=mnist5k \
        --workdir=workdirs/experts/mnist5k_standardize

Without --workdir the buffer goes to workdirs/experts/<dataset>_<preprocess>, where
configs/distill/mtt.py looks by default. Re-running with the same directory skips the
finished experts and resumes an interrupted group from its last finished epoch
(--restore=previous: from its newest intact checkpoint); raising --config.num_experts adds
experts to an existing buffer. A buffer trained with other settings is refused unless
--overwrite, which moves it to <workdir>/previous/<n>/.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from launch import common

_CONFIG = config_flags.DEFINE_config_file("config", None, "Expert config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The buffer directory (default: "
                               "workdirs/experts/<dataset>_<preprocess>).")
_RESTORE, _OVERWRITE = common.define_workdir_flags()
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  common.setup()
  from ddjax import experts  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  workdir = _WORKDIR.value or experts.default_buffer_dir(config.dataset, config.preprocess)
  result = common.run_reporting_errors(experts.train_experts, config, workdir,
                                       restore=_RESTORE.value, overwrite=_OVERWRITE.value)
  logging.info("Result: %s", result)
  print(f"{result['num_experts']} experts x {result['num_epochs']} epochs in "
        f"{result['buffer_dir']}; final test accuracy mean "
        f"{result['mean_final_test_accuracy']:.4f}")


if __name__ == "__main__":
  app.run(main, flags_parser=common.parse_flags)
