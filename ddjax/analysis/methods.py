"""The distillation methods as the paper names, orders and colours them: defined once.

Every analysis, figure, claim row and the report takes method names, labels, orders and
colours from here.
"""

from __future__ import annotations

__all__ = ["PAPER_ORDER", "FIG2_ORDER", "SHORT_NAME", "REPORT_NAME", "COLORS",
           "TRAJECTORY_METHODS", "MATCHING_METHODS", "CONTROL", "label", "color",
           "order_key"]

# The order of the paper's sections 4 and 5 and of its Figs. 4-6 (BPTT, DM, GM, TM), then
# KIP (not in the paper).
PAPER_ORDER = ("bptt", "dm", "dc", "dsa", "mtt", "kip")
# The group order of the paper's Fig. 2 (left) and section 3's text: TM and BPTT, whose
# sets real-trained models recognise, before DM and GM, whose sets they do not.
FIG2_ORDER = ("mtt", "bptt", "dm", "dc", "dsa", "kip")
# The method of the random-real baseline: plain real train images, the control.
CONTROL = "random"

# The paper's short names (figure legends and labels): GM is gradient matching (DC, and
# DC with differentiable Siamese augmentation), TM trajectory matching (MTT).
SHORT_NAME = {"mtt": "TM", "bptt": "BPTT", "dm": "DM", "dc": "GM", "dsa": "GM+DSA",
              "kip": "KIP", "random": "real subset"}
# The report's longer names, which also give the reference method.
REPORT_NAME = {"bptt": "BPTT", "dm": "DM", "dc": "GM (DC)", "dsa": "GM (DSA)",
               "mtt": "TM (MTT)", "kip": "KIP (not in the paper)",
               "random": "random real subset"}
# Colour-blind-safe colours (Okabe-Ito), one per method in every figure.
COLORS = {"bptt": "#E69F00", "dm": "#0072B2", "dc": "#009E73", "dsa": "#56B4E9",
          "mtt": "#CC79A7", "kip": "#D55E00", "random": "#999999"}

# The paper's two families (section 3): methods that match training trajectories (their
# sets are recognised by real-trained models) and methods that match gradients or
# feature distributions (theirs are not).
TRAJECTORY_METHODS = ("mtt", "bptt")
MATCHING_METHODS = ("dm", "dc", "dsa")


def label(name: str, method: str) -> str:
  """A set's display label: its name, with the paper's name of its method if different.

  Args:
    name: the set's name (e.g. "dm" or "dm_ipc1").
    method: the method that made it.

  Returns:
    "dm_ipc1 (DM)", or just the name when it already is the paper's name.
  """
  paper = SHORT_NAME.get(method)
  return f"{name} ({paper})" if paper and paper.lower() != name.lower() else name


def color(method: str, index: int) -> str | tuple:
  """The method's colour, or colour `index` of matplotlib's tab10 for other methods.

  Args:
    method: the method's name (e.g. "dm").
    index: the set's position, used (mod 10) only for methods without a fixed colour.

  Returns:
    A hex string from COLORS, or tab10's RGBA tuple.
  """
  if method in COLORS:
    return COLORS[method]
  import matplotlib  # pylint: disable=g-import-not-at-top
  return matplotlib.colormaps["tab10"](index % 10)


def order_key(name: str, method: str, order: tuple[str, ...] = PAPER_ORDER) -> tuple:
  """A sort key: methods of `order` first (in that order), then other learned methods,
  the random-real control last; ties by set name.

  Args:
    name: the set's name.
    method: its method.
    order: PAPER_ORDER or FIG2_ORDER.

  Returns:
    A tuple that sorts as described.
  """
  if method == CONTROL:
    return (2, 0, name)
  if method in order:
    return (0, order.index(method), name)
  return (1, 0, name)
