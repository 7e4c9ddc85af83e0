"""Differentiable unrolled SGD: the inner loop of BPTT and MTT.

    (params, velocity), losses = sgd_unroll(loss_fn, params, batches, lr, momentum=0.9)

runs one step per leading row of `batches` (a pytree), with PyTorch's SGD semantics:

    v <- momentum * v + grad loss_fn(params, batch_t)        (v = grad when momentum = 0)
    params <- params - lr * v

as one `lax.scan`. Everything is differentiable: reverse mode through the scan gives
the meta-gradient with respect to whatever `loss_fn` closes over (synthetic images,
labels), `lr`, `params` and `velocity`, including the path through the momentum buffer.

Memory: with `remat=True` each step is wrapped in `jax.checkpoint`, so the backward pass
stores only the per-step carry (params and velocity) and recomputes one step's
activations at a time. Without it, the scan keeps every step's activations (and those
of the inner gradient), which grows as activations x steps.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from ddjax.errors import ConfigError

__all__ = ["REMAT_POLICIES", "sgd_unroll"]

PyTree = Any
LossFn = Callable[[PyTree, PyTree], jax.Array]  # (params, batch) -> scalar loss

REMAT_POLICIES = {
    "nothing": None,  # save only the carry: the least memory
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "everything": jax.checkpoint_policies.everything_saveable,
}


def sgd_step(loss_fn: LossFn, params: PyTree, velocity: PyTree | None, batch: PyTree,
             lr: jax.Array, momentum: float = 0.0) -> tuple[tuple[PyTree, PyTree | None], jax.Array]:
  """One SGD step; returns ((params, velocity), pre-step loss). velocity is None iff momentum == 0.

  Args:
    loss_fn: (params, batch) -> scalar loss.
    params: the parameters.
    velocity: the momentum buffer, None without momentum.
    batch: this step's batch (any pytree).
    lr: the learning rate.
    momentum: the momentum (0: plain SGD).

  Returns:
    ((new params, new velocity), the loss before the step).
  """
  loss, grads = jax.value_and_grad(loss_fn)(params, batch)
  if momentum:
    velocity = jax.tree_util.tree_map(lambda v, g: momentum * v + g, velocity, grads)
    direction = velocity
  else:
    direction = grads
  params = jax.tree_util.tree_map(lambda p, d: p - lr * d.astype(p.dtype), params, direction)
  return (params, velocity), loss


def sgd_unroll(loss_fn: LossFn, params: PyTree, batches: PyTree, lr: jax.Array, *,
               momentum: float = 0.0, velocity: PyTree | None = None, remat: bool = True,
               remat_policy: str = "nothing", unroll: int = 1
               ) -> tuple[tuple[PyTree, PyTree | None], jax.Array]:
  """Unrolls `len(batches)` SGD steps as a scan; returns ((params, velocity), losses [T]).

  Args:
    loss_fn: (params, batch) -> scalar loss.
    params: the initial parameters.
    batches: a pytree whose leaves have a leading step axis T.
    lr: the learning rate (may be traced and differentiated).
    momentum: the momentum (0: plain SGD).
    velocity: the initial momentum buffer; defaults to zeros when momentum > 0 (a
      fresh optimiser) and must be None when momentum == 0.
    remat: wrap each step in `jax.checkpoint`.
    remat_policy: what a rematerialised step may keep besides its carry (see
      REMAT_POLICIES).
    unroll: `lax.scan`'s unroll.

  Returns:
    ((final params, final velocity), pre-step losses [T]).

  Raises:
    ValueError: a velocity with momentum == 0.
    ConfigError: an unknown remat_policy.
  """
  if momentum and velocity is None:
    velocity = jax.tree_util.tree_map(jnp.zeros_like, params)
  if not momentum and velocity is not None:
    raise ValueError("sgd_unroll: velocity given with momentum=0; plain SGD keeps no buffer.")
  if remat_policy not in REMAT_POLICIES:
    raise ConfigError(f"Unknown remat_policy {remat_policy!r}; expected one of {sorted(REMAT_POLICIES)}.")

  def body(carry, batch):
    return sgd_step(loss_fn, carry[0], carry[1], batch, lr, momentum)

  if remat:
    # prevent_cse=False is safe (and faster) inside scan, per the jax.checkpoint docs.
    body = jax.checkpoint(body, prevent_cse=False, policy=REMAT_POLICIES[remat_policy])
  return jax.lax.scan(body, (params, velocity), batches, unroll=unroll)


def sgd_run(loss_fn: LossFn, params: PyTree, velocity: PyTree | None, batches: PyTree,
            num_steps: jax.Array, lr: jax.Array, momentum: float = 0.0
            ) -> tuple[PyTree, PyTree | None]:
  """The first `num_steps` rows of `batches` (a traced count), without gradients.

  A `fori_loop` with a dynamic trip count: cheaper than a masked scan. Reverse mode
  cannot enter a while loop, so `loss_fn` must close over stop-gradiented data only
  (jax raises if a differentiated value reaches the loop); params, velocity and lr
  are stop-gradiented here.

  Args:
    loss_fn: (params, batch) -> scalar loss.
    params: the initial parameters.
    velocity: the initial momentum buffer (None without momentum).
    batches: a pytree whose leaves have a leading step axis.
    num_steps: how many leading rows to run (may be traced).
    lr: the learning rate.
    momentum: the momentum.

  Returns:
    (params, velocity) after the steps.
  """
  params, velocity = jax.lax.stop_gradient((params, velocity))

  def body(t, carry):
    batch = jax.tree_util.tree_map(lambda b: jax.lax.dynamic_index_in_dim(b, t, keepdims=False),
                                   batches)
    return sgd_step(loss_fn, carry[0], carry[1], batch, jax.lax.stop_gradient(lr), momentum)[0]

  return jax.lax.fori_loop(0, num_steps, body, (params, velocity))
