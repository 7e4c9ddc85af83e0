r"""Hessian trace, top eigenvalues and spectral density of a model at one parameter state.

    python -m launch.curvature --config=configs/curvature.py:quick --workdir=/tmp/ddjax/curv
    python -m launch.curvature --config=configs/curvature.py:checkpoint=/tmp/ddjax/train \
        --workdir=/tmp/ddjax/curv

Writes workdir/config.json, workdir/curvature.json and workdir/density.png.
"""

from absl import app, flags
from ml_collections import config_flags

from launch import common

_CONFIG = config_flags.DEFINE_config_file("config", None, "Curvature config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  common.setup()
  from ddjax.curvature import analysis  # pylint: disable=g-import-not-at-top
  result = common.run_reporting_errors(analysis.run_curvature, _CONFIG.value, _WORKDIR.value)
  print(f"results in {_WORKDIR.value}/curvature.json ({result['num_params']:,} parameters, "
        f"{result['num_examples']} examples of {result['data']})")


if __name__ == "__main__":
  app.run(main, flags_parser=common.parse_flags)
