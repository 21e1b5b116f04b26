import os, numpy as np, jax, jax.numpy as jnp, jax_roi
rng = np.random.default_rng(0)
def boxes(k, n, H, W):
    x1 = rng.uniform(0, W * 0.6, k); y1 = rng.uniform(0, H * 0.6, k)
    w = rng.uniform(16, W * 0.4, k); h = rng.uniform(16, H * 0.4, k)
    return jnp.asarray(np.stack([rng.integers(0, n, k), x1, y1, x1 + w, y1 + h], 1), jnp.float32)
x = jnp.asarray(rng.standard_normal((1, 512, 38, 50)), jnp.float32); r = boxes(300, 1, 608, 800)
f = jax.jit(lambda x, r: jax_roi.roi_pool(x, r, 7, spatial_scale=1/16))
x2 = jnp.asarray(rng.standard_normal((2, 256, 200, 304)), jnp.float32); r2 = boxes(1024, 2, 800, 1216)
g = jax.jit(lambda x, r: jax_roi.roi_align(x, r, 7, spatial_scale=0.25, sampling_ratio=2, aligned=True))
for _ in range(2):
    jax.block_until_ready(f(x, r)); jax.block_until_ready(g(x2, r2))
print(jax.jit(lambda x, r: jax_roi.roi_pool(x, r, 7, spatial_scale=1/16)).lower(x, r).compile().as_text()[:3000])
