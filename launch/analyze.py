r"""Run one, several or all analyses of the paper on distilled sets.

    python -m launch.analyze --config=configs/analysis/paper.py:dataset=mnist5k \
        --config.distilled=/tmp/ddjax/repro/distill --analysis=mixing,agreement \
        --workdir=/tmp/ddjax/analysis

--analysis: a comma-separated list of names from ddjax.analysis.ANALYSES, or `all`.
Each writes <workdir>/<name>.json and PNG figures.
"""

from absl import app, flags
from ml_collections import config_flags

from launch import common

_CONFIG = config_flags.DEFINE_config_file("config", None, "Analysis config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for results and figures.")
_ANALYSIS = flags.DEFINE_string("analysis", "all", "Comma-separated analysis names, or all.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  common.setup()
  from ddjax import analysis, workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  names = (list(analysis.ANALYSES) if _ANALYSIS.value == "all"
           else [n.strip() for n in _ANALYSIS.value.split(",") if n.strip()])
  for name in names:  # fail on a typo before any work
    if name not in analysis.ANALYSES:
      raise app.UsageError(f"Unknown analysis {name!r}; expected one of "
                           f"{sorted(analysis.ANALYSES)} or all.")
  workdir_lib.prepare_workdir(_WORKDIR.value, _CONFIG.value)
  for name in names:
    print(f"== {name}", flush=True)
    common.run_reporting_errors(analysis.get_analysis(name), _CONFIG.value, _WORKDIR.value)
    print(f"   wrote {_WORKDIR.value}/{name}.json", flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=common.parse_flags)
