"""What the tests compare a directory by, before and after something that must not touch it."""

import os


def tree_bytes(directory):
  """{path relative to `directory`: bytes} of every file under `directory`."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, directory)] = f.read()
  return out
