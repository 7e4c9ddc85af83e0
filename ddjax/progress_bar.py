"""The one progress bar of ddjax: tqdm, shown on a terminal and silent in logs and tests.

    for item in progress_bar.bar(items, desc="influence", enabled=config.progress):
      ...
"""

from __future__ import annotations

from typing import Iterable, TypeVar

from tqdm.auto import tqdm

__all__ = ["bar"]

T = TypeVar("T")


def bar(iterable: Iterable[T] | None = None, *, enabled: bool = True, **kwargs) -> tqdm:
  """A tqdm bar over `iterable` (or a manual one, with `total=`).

  Args:
    iterable: what to iterate over; None for a bar advanced with `.update()`.
    enabled: False silences it. True leaves it to tqdm's `disable=None`: drawn on a
      terminal, silent when the output is not one (log files, CI, tests).
    **kwargs: passed to tqdm (desc, total, unit, initial, ...).

  Returns:
    The tqdm object (iterable, and a context manager).
  """
  return tqdm(iterable, disable=None if enabled else True, **kwargs)
