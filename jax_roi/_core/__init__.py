"""The op-agnostic core of jax_roi.

Nothing here knows any particular op. Modules and what they may import:

* ``args``, ``layout``, ``jnp_utils``: argument canonicalisation, shapes and
  layouts, numerics helpers for the pure-JAX versions. They import only jax
  and numpy (never the compiled extension), so every op's pure-JAX version
  can use them.
* ``sharding``, ``batching``: sharding rules and the vmap fold of a kernel
  call; pure Python over jax.
* ``extension``: loads the compiled module and registers its FFI targets.
* ``kernel``: the only ``jax.ffi.ffi_call`` site (custom_vmap around
  custom_partitioning around ffi_call).
* ``dispatch``: one jitted entry point for every op (kernel or pure JAX per
  platform, shard by shard under explicit meshes).
* ``autodiff``: the generic custom_vjp wiring shared by every op.

Imports flow one way: ``jax_roi.ops`` -> ``jax_roi._<op>`` -> ``jax_roi._core``.
"""
