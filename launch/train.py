r"""Trains a classifier on real data and reports test accuracy.

    python -m launch.train --config=configs/train.py --workdir=/tmp/ddjax/train
    python -m launch.train --config=configs/train.py:model=resnet18,dataset=cifar10 \
        --config.data_dir=~/tensorflow_datasets --workdir=/tmp/ddjax/r18

Re-running with the same --workdir resumes from its latest checkpoint (--restore=previous:
from the newest intact one); a workdir holding a run of another config is refused unless
--overwrite, which moves that run to <workdir>/previous/<n>/.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from launch import common

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for config, metrics and checkpoints.")
_RESTORE, _OVERWRITE = common.define_workdir_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  common.setup()
  from ddjax import classifier  # pylint: disable=g-import-not-at-top
  result = common.run_reporting_errors(classifier.train_and_evaluate, _CONFIG.value, _WORKDIR.value,
                                       restore=_RESTORE.value, overwrite=_OVERWRITE.value)
  logging.info("Result: %s", result)
  print(f"test_accuracy={result['test_accuracy']:.4f} ({result['model']} on {result['dataset']}, "
        f"{result['epochs']} epochs); results in {_WORKDIR.value}/results.json")


if __name__ == "__main__":
  app.run(main, flags_parser=common.parse_flags)
