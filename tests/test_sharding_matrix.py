"""The sharding matrix, for every op in helpers.MATRIX_OPS, forward and
backward (feature and box gradients), on 8 virtual CPU devices:

  mesh axis types {Explicit, Auto} x {inside jax.set_mesh, no mesh context}
  x {arrays placed with device_put, jit(in_shardings, out_shardings),
  shard_map} x {batch, RoI, channel sharding} x {(K, 5) rows, (N, R, 4) boxes}
  (and both layouts).

Each case equals the op on one device, and the compiled HLO of the forward
and of the gradient holds no all-gather, all-to-all or collective-permute,
except batch-sharded features with (K, 5) rows outside shard_map (a row
names its image by value: the features are gathered; README "Sharding").
The forward holds no collective at all otherwise; gradients of operands
replicated over the sharded axis are summed (all-reduce).

The default run samples the matrix (all pairs of axis values, per op: every
value of every axis is covered); the full product of the other axes (each
combination in one layout, the layouts alternating) is marked slow. The cases
run in one worker process per pytest process (tests/scripts/
sharding_matrix_worker.py; the device count is fixed when jax starts).
"""

from __future__ import annotations

import itertools
import json
import os
import pathlib
import selectors
import subprocess
import sys

import pytest
from helpers import MATRIX_OPS

WORKER = pathlib.Path(__file__).parent / "scripts" / "sharding_matrix_worker.py"
AXES = {
  "axes": ("explicit", "auto"),
  "context": ("set_mesh", "none"),
  "placement": ("device_put", "jit", "shard_map"),
  "sharding": ("batch", "roi", "channel"),
  "fmt": ("indexed", "batched"),
  "layout": ("NCHW", "NHWC"),
}
GATHERING = {"all-gather", "all-to-all", "collective-permute"}
CASE_TIMEOUT_S = 300


def _full(with_layout=True):
  """Every combination of AXES; without_layout, every combination of the
  other axes, each with one layout (alternating)."""
  axes = AXES if with_layout else {a: v for a, v in AXES.items() if a != "layout"}
  combos = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
  if not with_layout:
    for i, c in enumerate(combos):
      c["layout"] = AXES["layout"][(i + i // 6) % 2]
  return combos


def _pairwise(offset):
  """A deterministic greedy all-pairs cover of AXES (about 9 of the 144
  combinations); `offset` rotates the tie-breaking, so that each op gets a
  different sample."""
  names = list(AXES)
  combos = _full()
  combos = combos[offset % len(combos) :] + combos[: offset % len(combos)]
  pairs = lambda c: {(a, c[a], b, c[b]) for a, b in itertools.combinations(names, 2)}
  uncovered = set().union(*(pairs(c) for c in combos))
  chosen = []
  while uncovered:
    best = max(combos, key=lambda c: len(pairs(c) & uncovered))
    chosen.append(best)
    uncovered -= pairs(best)
  return chosen


def _case_id(op, c, axes=AXES):
  return "-".join([op] + [c[a] for a in axes])


def _cases():
  """Per op: the all-pairs sample, then (slow) every other combination of
  the axes but the layout (each layout is half of them)."""
  sampled, rest = [], []
  no_layout = [a for a in AXES if a != "layout"]
  for i, op in enumerate(MATRIX_OPS):
    picked = _pairwise(37 * i)
    seen = {_case_id(op, c, no_layout) for c in picked}
    sampled += [pytest.param(dict(c, op=op), id=_case_id(op, c)) for c in picked]
    rest += [
      pytest.param(dict(c, op=op), id=_case_id(op, c), marks=pytest.mark.slow)
      for c in _full(with_layout=False)
      if _case_id(op, c, no_layout) not in seen
    ]
  return sampled + rest


def test_the_sample_covers_every_pair_of_axis_values():
  full = _full(with_layout=False)
  assert len(full) == 72 and {c["layout"] for c in full} == set(AXES["layout"])
  for sharding, fmt in itertools.product(AXES["sharding"], AXES["fmt"]):
    assert {c["layout"] for c in full if (c["sharding"], c["fmt"]) == (sharding, fmt)} == {
      "NCHW",
      "NHWC",
    }
  for i, _ in enumerate(MATRIX_OPS):
    picked = _pairwise(37 * i)
    assert len(picked) < 20
    for a, b in itertools.combinations(AXES, 2):
      assert {(c[a], c[b]) for c in picked} == set(itertools.product(AXES[a], AXES[b]))


class Worker:
  """The worker process: one JSON case in, one JSON result out."""

  def __init__(self):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    self.proc = subprocess.Popen(
      [sys.executable, "-P", str(WORKER)],
      env=env,
      text=True,
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
    )
    self.selector = selectors.DefaultSelector()
    self.selector.register(self.proc.stdout, selectors.EVENT_READ)
    assert self._read(120) == {"ready": True}

  def _read(self, timeout):
    if not self.selector.select(timeout):
      self.proc.kill()
      self.proc.wait()
      raise TimeoutError(f"sharding matrix worker: no answer in {timeout} s")
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"sharding matrix worker exited ({self.proc.wait()})")
    return json.loads(line)

  def run(self, case):
    self.proc.stdin.write(json.dumps(case) + "\n")
    self.proc.stdin.flush()
    return self._read(CASE_TIMEOUT_S)

  def close(self):
    self.selector.close()
    self.proc.stdin.close()
    self.proc.wait(timeout=60)
    self.proc.stdout.close()


@pytest.fixture(scope="module")
def worker():
  w = Worker()
  yield w
  w.close()


@pytest.mark.parametrize("case", _cases())
def test_sharded_equals_one_device_without_gathers(worker, case):
  result = worker.run(case)
  assert result["ok"], result["error"]
  needs_gather = (
    case["sharding"] == "batch" and case["fmt"] == "indexed" and case["placement"] != "shard_map"
  )
  forward, backward = result["collectives"]["forward"], result["collectives"]["backward"]
  if needs_gather:
    assert set(forward) <= {"all-gather"}, forward
    assert "all-gather" in forward  # the documented cost (README "Sharding")
  else:
    assert forward == [], forward
    assert not GATHERING & set(backward), backward
