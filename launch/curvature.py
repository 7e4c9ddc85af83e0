r"""Hessian trace, top eigenvalues and spectral density of a model at one parameter state.

    python -m launch.curvature --config=configs/curvature.py:quick --workdir=/tmp/ddjax/curv
    python -m launch.curvature --config=configs/curvature.py:checkpoint=/tmp/ddjax/train \
        --workdir=/tmp/ddjax/curv

Writes workdir/config.json, workdir/curvature.json and workdir/density.png.
"""

from absl import app, flags
from ml_collections import config_flags
import numpy as np

from launch import common

_CONFIG = config_flags.DEFINE_config_file("config", None, "Curvature config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the results.")
flags.mark_flags_as_required(["config", "workdir"])


def summary_lines(result: dict) -> list[str]:
  """One line per computed quantity of `analysis.run_curvature`'s result, for the user."""
  lines = []
  if "trace" in result:
    t = result["trace"]
    lines.append(f"trace {t['trace']:.6g} +- {t['stderr']:.2g} ({t['num_probes']} probes, "
                 f"{t['time_s']:.1f}s)")
  if "topk" in result:
    t = result["topk"]
    values = np.array2string(np.asarray(t["eigenvalues"]), precision=4)
    lines.append(f"top-{len(t['eigenvalues'])} eigenvalues ({t['method']}): {values} "
                 f"({t['time_s']:.1f}s)")
  if "density" in result:
    d = result["density"]
    lines.append(f"SLQ density: {len(d['nodes'])} probe(s) x {d['num_iters']} steps "
                 f"({d['time_s']:.1f}s), trace estimate {d['trace_estimate']:.6g}")
  return lines


def main(argv):
  del argv
  common.setup()
  from ddjax.curvature import analysis  # pylint: disable=g-import-not-at-top
  result = common.run_reporting_errors(analysis.run_curvature, _CONFIG.value, _WORKDIR.value)
  for line in summary_lines(result):
    print(line)
  print(f"results in {_WORKDIR.value}/curvature.json ({result['num_params']:,} parameters, "
        f"{result['num_examples']} examples of {result['data']})")


if __name__ == "__main__":
  app.run(main, flags_parser=common.parse_flags)
