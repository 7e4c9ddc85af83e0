"""Distilled sets shipped with ddjax, distilled to a plateau, loadable with one call.

    from ddjax import distill
    dset = distill.load_pretrained("mnist5k", method="mtt", ipc=10)
    dset.images, dset.labels      # model space, class-sorted; dset.preprocessor inverts

The sets live in a versioned directory inside the package (`pretrained_sets/v1/`), one
`<dataset>/<method>_ipc<ipc>.npz` (the ordinary distilled-set file, see `synset.py`)
and one `<dataset>/<method>_ipc<ipc>_progress.png` (accuracy against iteration, and the
images at a few iterations) per entry, with `manifest.json` beside them. For each entry
the manifest gives the command, config and commit that made it; its iterations, wall
and CPU time; its protocol-A accuracy (mean and std over 5 seeds) and that of its own
initialisation; the evaluation history with the plateau test; the mean pixel
correlation with its real initialisation; the file's shape and sha256.

`load_pretrained` checks the file against the manifest's sha256 before it validates
the set as `load_distilled` does, so a damaged or swapped file is refused, never used.
`python -m launch.pretrained` regenerates an entry (see its docstring).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from ddjax import integrity
from ddjax.distill import synset

__all__ = ["MANIFEST", "VERSION", "available", "entry_name", "install", "load_pretrained",
           "pretrained_path", "read_manifest", "set_dir", "summary_table"]

VERSION = "v1"
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained_sets")
MANIFEST = "manifest.json"


def set_dir(version: str = VERSION) -> str:
  """The directory of one version of the shipped sets.

  Args:
    version: the version (default VERSION).

  Returns:
    ddjax/distill/pretrained_sets/<version>.
  """
  return os.path.join(ROOT, version)


def entry_name(dataset: str, method: str, ipc: int) -> str:
  """The manifest key and relative file stem of an entry: `<dataset>/<method>_ipc<ipc>`.

  Args:
    dataset: the dataset name.
    method: the method (or entry method) name.
    ipc: images per class.

  Returns:
    The entry name.
  """
  return f"{dataset}/{method}_ipc{int(ipc)}"


def read_manifest(directory: str | None = None) -> dict[str, Any]:
  """The manifest of a set directory (default: the shipped version); {} entries if none.

  Args:
    directory: a directory holding `manifest.json`; None for `set_dir(VERSION)`.

  Returns:
    {"version": str, "entries": {entry_name: record}}.

  Raises:
    DistilledSetError: the manifest is not valid JSON.
  """
  path = os.path.join(directory or set_dir(), MANIFEST)
  if not os.path.exists(path):
    return {"version": os.path.basename(directory or set_dir()), "entries": {}}
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise synset.DistilledSetError(f"{path} is not valid JSON: {e}") from e


def available(directory: str | None = None) -> list[tuple[str, str, int]]:
  """(dataset, method, ipc) of every shipped set, sorted.

  Args:
    directory: a set directory; None for the shipped version.

  Returns:
    The sorted (dataset, method, ipc) tuples of the manifest's entries.
  """
  entries = read_manifest(directory)["entries"]
  return sorted((r["dataset"], r["method"], int(r["ipc"])) for r in entries.values())


def _entry(dataset: str, method: str, ipc: int,
           directory: str | None) -> tuple[str, dict[str, Any]]:
  """(npz path, manifest record) of a shipped set, from one read of the manifest."""
  directory = directory or set_dir()
  name = entry_name(dataset, method, ipc)
  entries = read_manifest(directory)["entries"]
  if name not in entries:
    shipped = ", ".join(entries) or "none"
    raise synset.DistilledSetError(
        f"No shipped distilled set {name!r} in {directory}; shipped: {shipped}. `python -m "
        f"launch.pretrained --config=configs/pretrained.py:dataset={dataset},method={method},"
        f"ipc={ipc}` makes it.")
  return os.path.join(directory, entries[name]["file"]), entries[name]


def pretrained_path(dataset: str, method: str, ipc: int, directory: str | None = None) -> str:
  """The .npz path of a shipped set (checked against the manifest, not loaded).

  Args:
    dataset: the dataset name.
    method: the method (entry) name.
    ipc: images per class.
    directory: a set directory; None for the shipped version.

  Returns:
    The path of the entry's .npz file (which may be missing).

  Raises:
    DistilledSetError: no such entry in the manifest (the message lists what is shipped).
  """
  return _entry(dataset, method, ipc, directory)[0]


def load_pretrained(dataset: str, method: str, ipc: int,
                    directory: str | None = None) -> synset.DistilledSet:
  """Loads a shipped distilled set, verified against its manifest entry.

  Args:
    dataset: e.g. "mnist5k".
    method: dc, dsa, dm, mtt, bptt, kip (and random, the real subset they start from).
    ipc: images per class.
    directory: a set directory other than the shipped version (for regenerated sets).

  Returns:
    The `DistilledSet`, validated as `load_distilled` validates any distilled set.

  Raises:
    DistilledSetError: unknown entry, missing file, sha256 or shape mismatch with the
      manifest, or a set that fails validation.
  """
  path, record = _entry(dataset, method, ipc, directory)
  if not os.path.exists(path):
    raise synset.DistilledSetError(f"Shipped distilled set {path} is missing.")
  digest = integrity.file_sha256(path)
  if digest != record["sha256"]:
    raise synset.DistilledSetError(
        f"{path}: sha256 {digest[:12]}... does not match the manifest's "
        f"{record['sha256'][:12]}...; the file is damaged or was replaced.")
  dset = synset.load_distilled(path, num_classes=record.get("num_classes"))
  if list(dset.images.shape) != list(record["shape"]):
    raise synset.DistilledSetError(f"{path}: images of shape {list(dset.images.shape)}, the "
                                   f"manifest says {record['shape']}.")
  expected = record.get("set_method", method)
  if dset.method != expected or dset.dataset != dataset or dset.ipc != int(ipc):
    raise synset.DistilledSetError(
        f"{path} holds {dset.method}/{dset.dataset}/IPC {dset.ipc}, not {expected}/{dataset}/"
        f"IPC {ipc}.")
  return dset


def install(distilled_file: str, record: dict[str, Any], entry_method: str | None = None,
            directory: str | None = None,
            figures: dict[str, str] | None = None) -> dict[str, Any]:
  """Copies a finished run's distilled set (and figures) into a set directory and adds its
  manifest entry. Files are written to temporary names and renamed, and the manifest is
  rewritten atomically, so an interrupted install leaves the previous manifest valid.

  Args:
    distilled_file: the run's `distilled.npz`.
    record: the manifest fields (command, config, commit, timings, accuracies, ...).
    entry_method: the entry's method name when it differs from the set's own (bptt_full
      for a full-unroll BPTT set, random_independent for another random draw).
    directory: the set directory (default: the shipped version).
    figures: {suffix: path} of PNGs to copy beside the set, e.g. {"progress": ...}.

  Returns:
    The entry as written to the manifest.
  """
  directory = directory or set_dir()
  dset = synset.load_distilled(distilled_file)
  method = entry_method or dset.method
  name = entry_name(dset.dataset, method, dset.ipc)
  rel = name + ".npz"
  target = os.path.join(directory, rel)
  os.makedirs(os.path.dirname(target), exist_ok=True)
  shutil.copyfile(distilled_file, target + ".tmp")
  os.replace(target + ".tmp", target)
  entry = dict(record, dataset=dset.dataset, method=method, set_method=dset.method, ipc=dset.ipc,
               num_classes=dset.num_classes, file=rel, shape=list(dset.images.shape),
               sha256=integrity.file_sha256(target))
  for suffix, path in (figures or {}).items():
    fig_rel = f"{name}_{suffix}.png"
    shutil.copyfile(path, os.path.join(directory, fig_rel) + ".tmp")
    os.replace(os.path.join(directory, fig_rel) + ".tmp", os.path.join(directory, fig_rel))
    entry[f"{suffix}_figure"] = fig_rel
  manifest = read_manifest(directory)
  manifest["version"] = os.path.basename(os.path.normpath(directory))
  manifest["entries"][name] = entry
  manifest["entries"] = dict(sorted(manifest["entries"].items()))
  tmp = os.path.join(directory, MANIFEST + ".tmp")
  with open(tmp, "w") as f:
    json.dump(manifest, f, indent=1, sort_keys=False, default=str)
    f.write("\n")
  os.replace(tmp, os.path.join(directory, MANIFEST))
  return entry


def summary_table(directory: str | None = None) -> str:
  """A markdown table of a set directory's manifest: accuracy against the random subset
  each set starts from, the plateau evidence, drift and cost (for README / BUILD_NOTES).

  Args:
    directory: a set directory; None for the shipped version.

  Returns:
    The table as markdown text.
  """
  entries = read_manifest(directory)["entries"]
  rows = ["| set | protocol A (5 seeds) | its initialisation | peak (iteration) | "
          "iterations (stop) | corr. with init | CPU s |", "|---|---|---|---|---|---|---|"]
  for name, e in entries.items():
    init = (f"{e['init_protocol_a_mean']:.3f}" if e.get("init_protocol_a_mean") is not None
            and not e["method"].startswith("random") else "–")
    peak = (f"{e['peak_protocol_a_mean']:.3f} ({e['peak_iteration']})"
            if e.get("peak_protocol_a_mean") is not None and not e["method"].startswith("random")
            else "–")
    stop = (f"{e['iterations']} ({e.get('stop_reason')})" if not e["method"].startswith("random")
            else "–")
    rows.append(f"| {name} | {e['protocol_a_mean']:.3f} ± {e['protocol_a_std']:.3f} | {init} | "
                f"{peak} | {stop} | {e['init_correlation']:.3f} | {e['cpu_seconds']:.0f} |")
  return "\n".join(rows)
