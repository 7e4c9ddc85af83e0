"""Spreading embarrassingly parallel work over all local devices with jax.sharding.

Most of ddjax's heavy work is a `vmap` over independent members: seeds, experts,
subset-trained models, leave-one-out masks, Hutchinson probes, dataset batches.
`sharded_vmap` runs such a vmap with its member axis split over a 1-D device mesh
(NamedSharding; XLA's SPMD partitioner keeps each member on one device), padding the
axis to a multiple of the device count and trimming the result. Each member's
arithmetic is the same as on one device, so results match a single-device run up to
float tolerance (tested on 8 forced CPU devices).

Multi-host (TPU pods, multi-node GPU): call `initialize_multihost()` first in every
process; the mesh then spans `jax.devices()` and inputs must be identical on every host.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PyTree = Any
MEMBER_AXIS = "members"


def initialize_multihost(coordinator_address: str | None = None, num_processes: int | None = None,
                         process_id: int | None = None) -> None:
  """`jax.distributed.initialize` (arguments auto-detected on TPU pods / SLURM)."""
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)


def member_mesh(devices: list | None = None) -> Mesh:
  """A 1-D mesh over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (MEMBER_AXIS,))


def _pad_leading(x: jax.Array, multiple: int) -> jax.Array:
  pad = -x.shape[0] % multiple
  if not pad:
    return x
  # Repeat the last member: valid inputs (a zero pad could be an invalid state).
  return jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)], axis=0)


def sharded_vmap(fn: Callable[..., PyTree], mesh: Mesh | None = None,
                 in_axes: int | None | tuple = 0) -> Callable[..., PyTree]:
  """`jit(vmap(fn, in_axes))` with the mapped axis split over `mesh`'s devices.

  Arguments with in_axes=None are replicated. The mapped axis must be the leading
  axis (in_axes 0 or None per argument). Outputs have the member axis leading.
  """

  @functools.wraps(fn)
  def wrapped(*args):
    the_mesh = mesh or member_mesh()
    num_devices = the_mesh.devices.size
    axes = in_axes if isinstance(in_axes, tuple) else (in_axes,) * len(args)
    if len(axes) != len(args):
      raise ValueError(f"in_axes has {len(axes)} entries for {len(args)} arguments.")
    if any(a not in (0, None) for a in axes):
      raise ValueError(f"sharded_vmap maps leading axes only (in_axes 0 or None), got {axes}.")
    sizes = {leaf.shape[0] for a, arg in zip(axes, args) if a == 0
             for leaf in jax.tree_util.tree_leaves(arg)}
    if len(sizes) != 1:
      raise ValueError(f"Mapped arguments disagree on the member count: {sorted(sizes)}.")
    (num_members,) = sizes
    shard = NamedSharding(the_mesh, PartitionSpec(MEMBER_AXIS))
    replicate = NamedSharding(the_mesh, PartitionSpec())
    placed = []
    for a, arg in zip(axes, args):
      if a == 0:
        arg = jax.tree_util.tree_map(lambda x: _pad_leading(jnp.asarray(x), num_devices), arg)
        placed.append(jax.device_put(arg, shard))
      else:
        placed.append(jax.device_put(arg, replicate))
    out = _jitted_vmap(fn, axes)(*placed)
    return jax.tree_util.tree_map(lambda x: x[:num_members], out)

  return wrapped


@functools.lru_cache(maxsize=64)
def _jitted_vmap(fn, axes):
  return jax.jit(jax.vmap(fn, in_axes=axes))


def sharded_sum(fn: Callable[..., PyTree], mesh: Mesh | None = None,
                in_axes: int | None | tuple = 0) -> Callable[..., PyTree]:
  """Sum over members of `fn` (e.g. weighted per-batch HVPs), members split over devices.

  Padded members are masked out of the sum, so it is exact for any member count.
  """

  def masked(valid, *args):
    out = fn(*args)
    return jax.tree_util.tree_map(lambda x: jnp.where(valid, x, jnp.zeros_like(x)), out)

  @functools.wraps(fn)
  def wrapped(*args):
    the_mesh = mesh or member_mesh()
    axes = in_axes if isinstance(in_axes, tuple) else (in_axes,) * len(args)
    leaves = [leaf for a, arg in zip(axes, args) if a == 0 for leaf in jax.tree_util.tree_leaves(arg)]
    if not leaves:
      raise ValueError("sharded_sum needs at least one mapped argument.")
    num_members = leaves[0].shape[0]
    pad_to = the_mesh.devices.size
    args = tuple(jax.tree_util.tree_map(lambda x: _pad_leading(jnp.asarray(x), pad_to), arg)
                 if a == 0 else arg for a, arg in zip(axes, args))
    valid = jnp.arange(-(-num_members // pad_to) * pad_to) < num_members
    per_member = sharded_vmap(masked, the_mesh, (0,) + tuple(axes))(valid, *args)
    return jax.tree_util.tree_map(lambda x: x.sum(axis=0), per_member)

  return wrapped
