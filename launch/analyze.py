r"""Run one, several or all analyses of the paper on distilled sets, and their report.

    python -m launch.analyze --config=configs/analysis/paper.py:dataset=mnist5k \
        --config.distilled=/tmp/ddjax/repro/distill --analysis=mixing,agreement \
        --workdir=/tmp/ddjax/analysis

--analysis: a comma-separated list of names from `ddjax.analysis.names()`, `all`, or the
dotted path of an analysis module of your own package (see ddjax/analysis/__init__.py).
Each writes <workdir>/<name>.json and PNG figures; <workdir>/report.md shows them all,
with the claim rows they compute.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from launch import common

_CONFIG = config_flags.DEFINE_config_file("config", None, "Analysis config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for results and figures.")
_ANALYSIS = flags.DEFINE_string("analysis", "all", "Comma-separated analysis names, or all.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  common.setup()
  from ddjax import analysis, errors, workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from ddjax.analysis import reproduce  # pylint: disable=g-import-not-at-top
  names = (analysis.names() if _ANALYSIS.value == "all"
           else [n.strip() for n in _ANALYSIS.value.split(",") if n.strip()])
  for name in names:  # fail on a typo before any work
    try:
      analysis.load(name)
    except errors.ConfigError as e:
      raise app.UsageError(str(e)) from None
  workdir_lib.prepare_workdir(_WORKDIR.value, _CONFIG.value)
  for name in names:
    logging.info("== %s", name)
    common.run_reporting_errors(analysis.get_analysis(name), _CONFIG.value, _WORKDIR.value)
    logging.info("wrote %s/%s.json", _WORKDIR.value, analysis.key_of(name))
  out = reproduce.analysis_report(_WORKDIR.value, names, _CONFIG.value)
  done, total = out["counts"]["all"]
  print(f"{done} of {total} claims reproduced; report in {out['path']}")


if __name__ == "__main__":
  app.run(main, flags_parser=common.parse_flags)
