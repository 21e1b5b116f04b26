"""examples/demo.py: the two-stage detector demo trains with every RoI op and draws."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

DEMO = pathlib.Path(__file__).parents[1] / "examples" / "demo.py"


@pytest.fixture(scope="module")
def demo():
  """examples/demo.py imported as a module (examples/ is not a package)."""
  spec = importlib.util.spec_from_file_location("jax_roi_demo", DEMO)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # Flax's dataclasses look their module up here
  try:
    spec.loader.exec_module(module)
    yield module
  finally:
    del sys.modules[spec.name]


@pytest.mark.parametrize(
  "op",
  [
    pytest.param("roi_pool", marks=pytest.mark.slow),
    pytest.param("roi_align", marks=pytest.mark.slow),
    pytest.param("multi_scale", marks=pytest.mark.slow),
  ],
)
def test_demo_trains_and_draws(demo, op, tmp_path, capsys):
  out = tmp_path / f"{op}.png"
  summary = demo.run(
    ["--op", op, "--steps", "64", "--train-images", "128", "--test-images", "8", "--out", str(out)]
  )
  losses = summary["losses"]
  assert len(losses) == 64
  # measured: the mean of the last 8 losses is 0.64-0.70 of the first 8's
  assert sum(losses[-8:]) < 0.8 * sum(losses[:8])
  assert 0 <= summary["accuracy"] <= 1
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  printed = capsys.readouterr().out
  assert "epoch 8/8 [" in printed  # 64 steps of 16 images over 128 images: 8 epochs
  assert "RoI classification accuracy on 8 held-out images" in printed


def test_demo_data_and_proposals(demo):
  """Static shapes; labels follow the IoU rule; deltas invert exactly."""
  import numpy as np

  rng = np.random.default_rng(0)
  data = demo.make_dataset(rng, 8)
  proposals = demo.make_proposals(rng, data)
  r = demo.NUM_JITTERED + demo.NUM_RANDOM
  assert data.images.shape == (8, demo.IMAGE_SIZE, demo.IMAGE_SIZE, 3)
  assert proposals.boxes.shape == (8, r, 4) and proposals.labels.shape == (8, r)
  assert ((data.labels > 0).sum(1) >= 1).all()
  iou = np.diagonal(demo.box_iou(proposals.boxes, proposals.gt_boxes), axis1=1, axis2=2)
  fg = proposals.labels > 0
  assert (iou[fg] >= demo.FG_IOU).all() and (iou[proposals.labels == 0] < demo.BG_IOU).all()
  assert fg.any() and (proposals.labels == 0).any()
  refined = demo.decode_deltas(proposals.boxes, proposals.deltas)
  np.testing.assert_allclose(refined[fg], proposals.gt_boxes[fg], atol=1e-3)


def test_missed_objects_are_found_and_drawn(demo, tmp_path):
  """An object without a detection of its class (IoU >= 0.5) is counted as
  missed and drawn; the right class over it counts as found, a wrong one not."""
  import numpy as np

  gt = np.array([[10.0, 10.0, 30.0, 30.0], [40.0, 40.0, 60.0, 60.0], [0, 0, 0, 0]], np.float32)
  labels = np.array([1, 2, 0], np.int32)
  dets = [
    (np.array([11.0, 10.0, 30.0, 31.0]), 1, 0.9),  # finds object 0
    (np.array([40.0, 40.0, 60.0, 60.0]), 3, 0.8),
  ]  # object 1's box, wrong class
  np.testing.assert_array_equal(demo.found_objects(gt, labels, dets), [True, False, False])
  np.testing.assert_array_equal(demo.found_objects(gt, labels, []), [False, False, False])

  data = demo.make_dataset(np.random.default_rng(0), 2)
  r, c = 4, len(demo.CLASSES)
  scores = np.zeros((2, r, c), np.float32)
  scores[..., 0] = 1.0  # everything background: every object is missed
  refined = np.tile(np.float32([0, 0, 8, 8]), (2, r, 1))
  evaluation = demo.Evaluation(0.0, 1.0, 0.0, 0.0, 0.0, scores, refined)
  out = tmp_path / "d.png"
  missed, total = demo.save_detections(str(out), data, evaluation, "t", n_images=2)
  assert total == int((data.labels > 0).sum()) >= 2 and missed == total
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  # Detections of the right class on the ground truth: nothing missed.
  scores = np.zeros((2, demo.MAX_OBJECTS, c), np.float32)
  scores[np.arange(2)[:, None], np.arange(demo.MAX_OBJECTS), data.labels] = 1.0
  evaluation = evaluation._replace(scores=scores, refined=data.boxes)
  assert demo.save_detections(str(out), data, evaluation, "t", n_images=2) == (0, total)


def test_demo_output_is_documented_and_git_ignored(demo):
  import subprocess

  root = DEMO.parents[1]
  assert demo.parse_args([]).out == "demo_detections.png"
  readme = (root / "README.md").read_text()
  assert "demo_detections.png" in readme and "--out detections.png" not in readme
  for path in ("demo_detections.png", "examples/demo_detections.png"):
    ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=root)
    if ignored.returncode == 128:
      pytest.skip("not a git checkout")
    assert ignored.returncode == 0, path
