"""Spreading embarrassingly parallel work over all local devices with jax.sharding.

Most of ddjax's heavy work is a `vmap` over independent members: seeds, experts,
subset-trained models, leave-one-out masks, Hutchinson probes, dataset batches.
`sharded_vmap` runs such a vmap with its member axis split over a 1-D device mesh
(NamedSharding; XLA's SPMD partitioner keeps each member on one device), padding the
axis to a multiple of the device count and trimming the result. Each member's
arithmetic is the same as on one device, so results match a single-device run up to
float tolerance (tested on 8 forced CPU devices).

Where it is used (each path gives the single-device result up to float rounding):

* `sharded_vmap` / `sharded_sum`: any pool (subset-trained or early-stopped models, seeds).
* expert trajectories (`ddjax.experts`): a vmapped group's states and keys are split over
  the devices when the group size is a multiple of the device count;
* leave-one-out retrains (`influence.loo_retrain`): the weight masks, padded;
* Hutchinson probes (`curvature.hutchinson_trace(..., mesh=)`): each probe block;
* full-dataset HVPs (`curvature.hessian_operator(..., mesh=)`): the data batches, summed
  by `sharded_scan_sum` (one partial sum per device, one all-reduce at the end);
* data-parallel DM / DC steps: the real batch of every class (`shard_axis`).

"auto" (the default of the library hooks) means every local device when this process
has more than one and runs alone; with one device nothing changes (the hooks return
their inputs untouched). `auto_sharding(False)` turns it off, e.g. to compute a
single-device reference. The setting is read when a function is traced.

Multi-host (TPU pods, multi-node GPU): call `initialize_multihost()` first in every
process (the binaries' `--multihost` flag); the mesh then spans `jax.devices()` and
inputs must be identical on every host. "auto" stays off in multi-process runs: pass a
mesh explicitly.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "MEMBER_AXIS", "auto_mesh", "auto_sharding", "initialize_multihost", "member_mesh",
    "members_per_call", "pad_members", "resolve_mesh", "round_up", "shard_axis", "shard_members",
    "sharded_scan_sum", "sharded_sum", "sharded_vmap",
]

PyTree = Any
MEMBER_AXIS = "members"


def initialize_multihost(coordinator_address: str | None = None, num_processes: int | None = None,
                         process_id: int | None = None) -> None:
  """`jax.distributed.initialize`: call once per process, before any JAX computation.

  Arguments left None are auto-detected on TPU pods, SLURM, Open MPI and Kubernetes,
  or read from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (a
  hand-started run: the same address on every host, e.g. "host0:1234").

  Args:
    coordinator_address: "host:port" of process 0.
    num_processes: the number of processes.
    process_id: this process's index.
  """
  if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
    num_processes = int(os.environ["JAX_NUM_PROCESSES"])
  if process_id is None and os.environ.get("JAX_PROCESS_ID"):
    process_id = int(os.environ["JAX_PROCESS_ID"])
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)


def member_mesh(devices: list | None = None) -> Mesh:
  """A 1-D mesh over `devices` (default: every device of every process).

  Args:
    devices: the devices, or None for `jax.devices()`.

  Returns:
    The Mesh, its one axis named MEMBER_AXIS.
  """
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (MEMBER_AXIS,))


def _pad_leading(x: jax.Array, multiple: int) -> jax.Array:
  pad = -x.shape[0] % multiple
  if not pad:
    return x
  # Repeat the last member: valid inputs (a zero pad could be an invalid state).
  return jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)], axis=0)


def round_up(n: int, multiple: int) -> int:
  """The smallest multiple of `multiple` that is >= n.

  Args:
    n: a count.
    multiple: a positive integer.

  Returns:
    ceil(n / multiple) * multiple.
  """
  return -(-int(n) // int(multiple)) * int(multiple)


def pad_members(tree: PyTree, multiple: int) -> PyTree:
  """Pads every leaf's leading axis to a multiple of `multiple` by repeating its last entry.

  Args:
    tree: a pytree of arrays with a common leading (member) axis.
    multiple: the multiple (usually the device count).

  Returns:
    The padded pytree (leaves already a multiple are returned as they are).
  """
  return jax.tree_util.tree_map(lambda x: _pad_leading(jnp.asarray(x), multiple), tree)


# ----------------------------------------------------------------------------- "auto" meshes

_AUTO_ENABLED = [True]


@contextlib.contextmanager
def _setting(cell: list, value: Any) -> Iterator[None]:
  """Holds `value` in the one-element module setting `cell` inside the block."""
  previous = cell[0]
  cell[0] = value
  try:
    yield
  finally:
    cell[0] = previous


def auto_sharding(enabled: bool) -> contextlib.AbstractContextManager:
  """Turns the library hooks' "auto" sharding on or off inside the block (read at trace time).

  Args:
    enabled: False makes "auto" mean no mesh (a single-device reference).

  Returns:
    A context manager.
  """
  return _setting(_AUTO_ENABLED, bool(enabled))


_MEMBERS_PER_CALL = [0]  # sharded_vmap's default chunk_size; 0 = every member in one call


def members_per_call(chunk_size: int) -> contextlib.AbstractContextManager:
  """Sets `sharded_vmap`'s default `chunk_size` inside the block (0 = all in one call).

  A memory bound for code that vmaps many models deep inside (the analyses' model pools),
  set once by whoever knows the machine, e.g. `config.member_chunk`.

  Args:
    chunk_size: members per call, >= 0.

  Returns:
    A context manager.

  Raises:
    ValueError: a negative chunk_size.
  """
  if int(chunk_size) < 0:
    raise ValueError(f"members_per_call: chunk_size must be >= 0, got {chunk_size}.")
  return _setting(_MEMBERS_PER_CALL, int(chunk_size))


def auto_mesh() -> Mesh | None:
  """A mesh over this process's devices if it has several and runs alone; else None.

  Returns:
    The Mesh, or None (one device, several processes, or `auto_sharding(False)`).
  """
  if not _AUTO_ENABLED[0] or jax.process_count() > 1 or jax.local_device_count() < 2:
    return None
  return _local_mesh(tuple(jax.local_devices()))


@functools.lru_cache(maxsize=8)
def _local_mesh(devices: tuple) -> Mesh:
  return member_mesh(list(devices))


def resolve_mesh(mesh: Mesh | str | None) -> Mesh | None:
  """"auto" -> `auto_mesh()`; a one-device mesh -> None (the unsharded path); else as given.

  Args:
    mesh: a Mesh, None or "auto".

  Returns:
    A Mesh of at least two devices, or None.

  Raises:
    ValueError: anything else.
  """
  if isinstance(mesh, str):
    if mesh != "auto":
      raise ValueError(f"mesh must be a jax.sharding.Mesh, None or 'auto', got {mesh!r}.")
    return auto_mesh()
  if mesh is not None and not isinstance(mesh, Mesh):
    raise ValueError(f"mesh must be a jax.sharding.Mesh, None or 'auto', got {type(mesh)}.")
  return None if mesh is None or mesh.devices.size < 2 else mesh


def member_spec(axis: int = 0) -> PartitionSpec:
  """PartitionSpec splitting `axis` over the member axis (other axes replicated).

  Args:
    axis: the array axis to split.

  Returns:
    The PartitionSpec.
  """
  return PartitionSpec(*([None] * axis + [MEMBER_AXIS]))


def shard_members(tree: PyTree, mesh: Mesh) -> PyTree:
  """Places every leaf with its leading axis split over `mesh` (eager; a multiple of its size).

  Args:
    tree: a pytree of arrays with a common leading axis.
    mesh: the device mesh.

  Returns:
    The pytree, placed.

  Raises:
    ValueError: a leaf's leading axis is not a multiple of the device count.
  """
  sharding = NamedSharding(mesh, member_spec(0))
  for leaf in jax.tree_util.tree_leaves(tree):
    if jnp.shape(leaf)[:1] == () or jnp.shape(leaf)[0] % mesh.devices.size:
      raise ValueError(f"shard_members: a leading axis of {jnp.shape(leaf)[:1]} does not split "
                       f"over {mesh.devices.size} devices; pad it first (pad_members).")
  return jax.device_put(tree, sharding)


def shard_axis(x: jax.Array, axis: int, mesh: Mesh | str | None = "auto") -> jax.Array:
  """Constrains (inside jit) or places (outside) `x` with `axis` split over the mesh.

  A no-op without a mesh, and when the axis length is not a multiple of the device
  count (the data then stays replicated, as on one device).

  Args:
    x: the array.
    axis: the axis to split.
    mesh: a Mesh, None or "auto" (`resolve_mesh`).

  Returns:
    `x`, with the sharding constraint when it applies.
  """
  mesh = resolve_mesh(mesh)
  if mesh is None or x.shape[axis] % mesh.devices.size:
    return x
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, member_spec(axis)))


def sharded_scan_sum(fn: Callable[..., PyTree], xs: PyTree, mesh: Mesh) -> PyTree:
  """sum_i fn(xs_i) over the leading axis of `xs`, traceable (use inside jit).

  The members are taken `mesh.size` at a time in a `lax.scan`, one per device (a
  vmap over the member axis); every device accumulates its own partial sum and the
  partial sums are added once at the end. The leading axis must be a multiple of
  the device count (pad it with members whose `fn` is zero). Memory stays that of
  one member per device, unlike a vmap over all members.

  Args:
    fn: member -> pytree of arrays.
    xs: the members, a pytree with a common leading axis.
    mesh: the device mesh.

  Returns:
    The sum of `fn` over the members, same structure as one output.

  Raises:
    ValueError: the member count is not a multiple of the device count.
  """
  num_devices = mesh.devices.size
  leaves = jax.tree_util.tree_leaves(xs)
  num_members = leaves[0].shape[0]
  if num_members % num_devices:
    raise ValueError(f"sharded_scan_sum: {num_members} members do not split over "
                     f"{num_devices} devices; pad them with members whose fn is zero.")
  member = NamedSharding(mesh, member_spec(0))
  grouped = jax.tree_util.tree_map(
      lambda a: jax.lax.with_sharding_constraint(
          a.reshape((num_members // num_devices, num_devices) + a.shape[1:]),
          NamedSharding(mesh, member_spec(1))), xs)
  first = jax.tree_util.tree_map(lambda a: a[0], grouped)
  shapes = jax.eval_shape(jax.vmap(fn), first)
  zeros = jax.tree_util.tree_map(
      lambda s: jax.lax.with_sharding_constraint(jnp.zeros(s.shape, s.dtype), member), shapes)

  def body(acc, group):
    return jax.tree_util.tree_map(jnp.add, acc, jax.vmap(fn)(group)), None

  partial_sums, _ = jax.lax.scan(body, zeros, grouped)
  return jax.tree_util.tree_map(lambda a: a.sum(axis=0), partial_sums)


def sharded_vmap(fn: Callable[..., PyTree], mesh: Mesh | None = None,
                 in_axes: int | None | tuple = 0,
                 chunk_size: int | None = None) -> Callable[..., PyTree]:
  """`jit(vmap(fn, in_axes))` with the mapped axis split over `mesh`'s devices.

  Arguments with in_axes=None are replicated. The mapped axis must be the leading
  axis (in_axes 0 or None per argument). Outputs have the member axis leading.

  Args:
    fn: the per-member function.
    mesh: the device mesh (default `member_mesh()`: every device).
    in_axes: 0 (mapped) or None (replicated), one per argument or one for all.
    chunk_size: at most this many members per call (rounded up to a multiple of the
      device count), so that peak memory is that of one chunk: 30 vmapped width-32
      ConvNets evaluated on 1,000 MNIST images need more than 24 GB on the CPU. The
      chunks run one after another through one compiled program (the last is padded
      with copies of its last member); 0 = all members in one call; None = the value
      set by `members_per_call` when the function is called (default 0).

  Returns:
    A function of the same arguments returning the stacked per-member outputs.
  """
  if chunk_size is not None and chunk_size < 0:
    raise ValueError(f"sharded_vmap: chunk_size must be >= 0, got {chunk_size}.")

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
    # Members per call: all of them, or chunk_size, as a multiple of the device count.
    chunk = _MEMBERS_PER_CALL[0] if chunk_size is None else chunk_size
    per_call = round_up(min(chunk, num_members) if chunk else num_members, num_devices)
    mapped = [jax.tree_util.tree_map(lambda x: _pad_leading(jnp.asarray(x), per_call), arg)
              if a == 0 else None for a, arg in zip(axes, args)]
    # As arrays: Python scalars cannot be put on another process's devices.
    replicated = [None if a == 0 else
                  jax.device_put(jax.tree_util.tree_map(jnp.asarray, arg), replicate)
                  for a, arg in zip(axes, args)]
    compiled = _jitted_vmap(fn, axes)
    outs = []
    for start in range(0, round_up(num_members, per_call), per_call):
      placed = [jax.device_put(jax.tree_util.tree_map(lambda x: x[start:start + per_call], m),
                               shard) if a == 0 else r
                for a, m, r in zip(axes, mapped, replicated)]
      outs.append(compiled(*placed))
    out = outs[0] if len(outs) == 1 else jax.tree_util.tree_map(
        lambda *xs: jnp.concatenate(xs), *outs)
    return jax.tree_util.tree_map(lambda x: x[:num_members], out)

  return wrapped


@functools.lru_cache(maxsize=64)
def _jitted_vmap(fn, axes):
  return jax.jit(jax.vmap(fn, in_axes=axes))


def sharded_sum(fn: Callable[..., PyTree], mesh: Mesh | None = None,
                in_axes: int | None | tuple = 0) -> Callable[..., PyTree]:
  """Sum over members of `fn` (e.g. weighted per-batch HVPs), members split over devices.

  Padded members are masked out of the sum, so it is exact for any member count.

  Args:
    fn: the per-member function.
    mesh: the device mesh (default `member_mesh()`).
    in_axes: 0 (mapped) or None (replicated), one per argument or one for all.

  Returns:
    A function of the same arguments returning the sum of the per-member outputs.
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
