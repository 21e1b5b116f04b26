"""A tiny two-stage detector head, trained end to end under jax.jit with jax_roi.

The second stage of a Fast/Faster R-CNN detector on a synthetic dataset:

* **Data** (numpy, from ``--seed``): 64x64 RGB images with one to three filled
  shapes (rectangles, ellipses and triangles of random colours, sizes and
  orientations) on a noisy background, with their ground-truth boxes and
  classes.
* **Proposals** stand in for a region proposal network: ground-truth boxes
  jittered in position and size, plus random boxes. A proposal whose IoU with
  a ground-truth box is >= 0.5 gets that box's class and regression target; one
  whose IoU with every ground-truth box is < 0.3 is background (class 0); the
  ones in between are ignored, as in Fast R-CNN. Every image has the same
  number of proposals, so all shapes are static: the boxes are fed to the RoI
  layer in jax_roi's batched ``(N, R, 4)`` format.
* **Model** (Flax linen): a small conv backbone (stride 4; with
  ``--op multi_scale`` also a tiny FPN with levels at strides 4, 8 and 16), the
  jax_roi layer chosen by ``--op`` (RoIPool, RoIAlign or MultiScaleRoIAlign,
  NHWC), and a two-layer MLP with a classification head (softmax
  cross-entropy) and a class-agnostic box-regression head (smooth L1 on Faster
  R-CNN's box deltas, foreground RoIs only), trained with Adam.
* **Output**: loss and RoI classification accuracy per epoch (with a progress
  bar), then the accuracy on held-out test images against a target (the exit
  status is 1 if it is missed) and how much the regression head tightens the
  foreground proposals; and a PNG of test images with the refined,
  top-scoring detections.

Run it with ``bash tools/run_demo.sh [options]`` (builds jax_roi into a virtual
environment first), or ``python examples/demo.py [options]`` where jax_roi and
its ``demo`` extra (flax, optax, matplotlib) are installed::

  python examples/demo.py                       # RoIAlign, about a minute on 2 CPU cores
  python examples/demo.py --op roi_pool         # or --op multi_scale (FPN)
  python examples/demo.py --steps 400 --seed 3 --out /tmp/detections.png

The PNG goes to ``--out`` (default ``demo_detections.png`` in the current
directory, git-ignored): solid boxes are detections (class and score), dashed
white boxes the ground truth (class), dashed magenta ones the ground-truth
objects no detection of their class found (IoU >= 0.5, "MISSED").
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax_roi import linen as roi_nn

CLASSES = ("background", "rectangle", "ellipse", "triangle")
IMAGE_SIZE = 64  # square images, in pixels
MAX_OBJECTS = 3  # ground-truth slots per image (unused slots are padding)
NUM_JITTERED = 16  # proposals per image around the ground-truth boxes
NUM_RANDOM = 16  # random proposals per image
POOL_SIZE = 7  # RoI features are 7x7, as in Fast R-CNN
FG_IOU, BG_IOU = 0.5, 0.3  # IoU thresholds for foreground and background RoIs
DELTA_STD = np.array([0.1, 0.1, 0.2, 0.2], np.float32)  # box-delta normalisation
TARGET_ACCURACY = 0.90  # the held-out RoI classification accuracy the demo must reach


# ----------------------------------------------------------------------------
# Synthetic data (numpy)
# ----------------------------------------------------------------------------


class Dataset(NamedTuple):
  images: np.ndarray  # (N, S, S, 3) float32 in [0, 1]
  boxes: np.ndarray  # (N, MAX_OBJECTS, 4) float32 xyxy, in pixels; zeros where unused
  labels: np.ndarray  # (N, MAX_OBJECTS) int32 in 1..3; 0 where unused


def shape_mask(kind: int, box: np.ndarray, orientation: int) -> np.ndarray:
  """A boolean (S, S) mask of a filled shape inscribed in ``box`` (x1, y1, x2, y2)."""
  x1, y1, x2, y2 = box
  yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] + 0.5  # pixel centres
  if kind == 1:  # rectangle
    return (xx >= x1) & (xx < x2) & (yy >= y1) & (yy < y2)
  if kind == 2:  # ellipse
    cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
  # Triangle: apex in the middle of one side of the box, base along the
  # opposite side. Work in coordinates where it points up, t in [0, 1] from
  # apex to base and u across, then turn by the orientation.
  if orientation in (0, 1):  # pointing up / down
    t, u, half = (yy - y1) / (y2 - y1), xx - (x1 + x2) / 2, (x2 - x1) / 2
  else:  # pointing left / right
    t, u, half = (xx - x1) / (x2 - x1), yy - (y1 + y2) / 2, (y2 - y1) / 2
  if orientation in (1, 3):
    t = 1 - t
  return (t >= 0) & (t <= 1) & (np.abs(u) <= t * half)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """IoU of boxes ``a`` (..., R, 4) with boxes ``b`` (..., G, 4): (..., R, G)."""
  a, b = a[..., :, None, :], b[..., None, :, :]
  iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
  ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
  inter = iw * ih
  area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
  area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
  return inter / np.maximum(area_a + area_b - inter, 1e-6)


def make_dataset(rng: np.random.Generator, n: int) -> Dataset:
  """``n`` images with 1 to MAX_OBJECTS non-overlapping shapes each."""
  images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
  boxes = np.zeros((n, MAX_OBJECTS, 4), np.float32)
  labels = np.zeros((n, MAX_OBJECTS), np.int32)
  for i in range(n):
    background = rng.uniform(0.0, 0.6, 3)
    image = np.broadcast_to(background, images.shape[1:]).copy()
    placed = 0
    for _ in range(rng.integers(1, MAX_OBJECTS + 1)):
      for _attempt in range(20):  # find a place at least 2 pixels from the other shapes
        w, h = rng.uniform(10, 30, 2)
        x1, y1 = rng.uniform(1, IMAGE_SIZE - 1 - w), rng.uniform(1, IMAGE_SIZE - 1 - h)
        box = np.array([x1, y1, x1 + w, y1 + h], np.float32)
        margin = box + np.array([-2, -2, 2, 2], np.float32)
        if placed == 0 or box_iou(margin[None], boxes[i, :placed]).max() == 0:
          break
      else:
        continue  # no room left: fewer shapes
      kind = int(rng.integers(1, len(CLASSES)))
      mask = shape_mask(kind, box, int(rng.integers(4)))
      if mask.sum() < 20:
        continue
      colour = rng.uniform(0, 1, 3)
      while np.linalg.norm(colour - background) < 0.4:  # keep the shape visible
        colour = rng.uniform(0, 1, 3)
      image[mask] = colour
      # The ground-truth box is the tight box of the drawn pixels.
      ys, xs = np.nonzero(mask)
      boxes[i, placed] = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
      labels[i, placed] = kind
      placed += 1
    image += rng.normal(0, 0.08, image.shape)
    images[i] = np.clip(image, 0, 1)
  return Dataset(images, boxes, labels)


class Proposals(NamedTuple):
  boxes: np.ndarray  # (N, R, 4) float32 xyxy
  labels: np.ndarray  # (N, R) int32: a class, 0 for background, -1 for ignored
  deltas: np.ndarray  # (N, R, 4) float32 normalised regression targets (foreground only)
  gt_boxes: np.ndarray  # (N, R, 4) float32: each RoI's matched ground-truth box


def encode_deltas(boxes: np.ndarray, gt: np.ndarray) -> np.ndarray:
  """Faster R-CNN's box deltas (dx, dy, dw, dh) from ``boxes`` to ``gt``, normalised."""
  w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
  gw, gh = gt[..., 2] - gt[..., 0], gt[..., 3] - gt[..., 1]
  dx = (gt[..., 0] + gt[..., 2] - boxes[..., 0] - boxes[..., 2]) / (2 * w)
  dy = (gt[..., 1] + gt[..., 3] - boxes[..., 1] - boxes[..., 3]) / (2 * h)
  d = np.stack([dx, dy, np.log(np.maximum(gw, 1) / w), np.log(np.maximum(gh, 1) / h)], -1)
  return (d / DELTA_STD).astype(np.float32)


def decode_deltas(boxes: np.ndarray, deltas: np.ndarray) -> np.ndarray:
  """Applies normalised deltas to ``boxes``: the inverse of :func:`encode_deltas`."""
  d = deltas * DELTA_STD
  w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
  cx, cy = boxes[..., 0] + w / 2 + d[..., 0] * w, boxes[..., 1] + h / 2 + d[..., 1] * h
  w, h = w * np.exp(np.minimum(d[..., 2], 4)), h * np.exp(np.minimum(d[..., 3], 4))
  out = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
  return np.clip(out, 0, IMAGE_SIZE)


def make_proposals(rng: np.random.Generator, data: Dataset) -> Proposals:
  """NUM_JITTERED jittered ground-truth boxes and NUM_RANDOM random boxes per image."""
  n = len(data.labels)
  # Jittered: proposal j of an image jitters its object j % (number of objects).
  num_objects = (data.labels > 0).sum(1)
  which = np.arange(NUM_JITTERED)[None, :] % num_objects[:, None]
  gt = np.take_along_axis(data.boxes, which[..., None], axis=1)
  size = gt[..., 2:] - gt[..., :2]
  centre = (gt[..., :2] + gt[..., 2:]) / 2 + rng.normal(0, 0.15, size.shape) * size
  size = size * np.exp(rng.normal(0, 0.2, size.shape))
  jittered = np.concatenate([centre - size / 2, centre + size / 2], -1)
  # Random: anywhere, 6 to 48 pixels wide and high.
  size = rng.uniform(6, 48, (n, NUM_RANDOM, 2))
  corner = rng.uniform(-4, IMAGE_SIZE + 4 - size, size.shape)
  random = np.concatenate([corner, corner + size], -1)
  boxes = np.clip(np.concatenate([jittered, random], 1), 0, IMAGE_SIZE).astype(np.float32)
  boxes[..., 2:] = np.maximum(boxes[..., 2:], boxes[..., :2] + 2)  # at least 2x2 pixels
  # Match each proposal to the ground-truth box it overlaps most.
  iou = np.where((data.labels > 0)[:, None, :], box_iou(boxes, data.boxes), 0)
  best, best_iou = iou.argmax(-1), iou.max(-1)
  matched = np.take_along_axis(data.boxes, best[..., None], axis=1)
  labels = np.take_along_axis(data.labels, best, axis=1)
  labels = np.where(best_iou >= FG_IOU, labels, np.where(best_iou < BG_IOU, 0, -1))
  deltas = np.where((labels > 0)[..., None], encode_deltas(boxes, matched), 0)
  return Proposals(boxes, labels.astype(np.int32), deltas.astype(np.float32), matched)


# ----------------------------------------------------------------------------
# Model (Flax linen)
# ----------------------------------------------------------------------------


def conv(features: int, stride: int = 1, kernel: int = 3) -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding="SAME")


class Backbone(nn.Module):
  """Conv layers down to stride 4; with ``fpn``, a tiny FPN at strides 4, 8, 16.

  Returns a list of NHWC feature maps, finest first (one map without ``fpn``).
  """

  fpn: bool = False
  channels: int = 32

  @nn.compact
  def __call__(self, images: jax.Array) -> list[jax.Array]:
    x = nn.relu(conv(16)(images - 0.5))
    x = nn.relu(conv(32, stride=2)(x))  # stride 2
    c4 = nn.relu(conv(self.channels, stride=2)(x))  # stride 4
    c4 = nn.relu(conv(self.channels)(c4))
    if not self.fpn:
      return [c4]
    c8 = nn.relu(conv(self.channels, stride=2)(c4))  # stride 8
    c16 = nn.relu(conv(self.channels, stride=2)(c8))  # stride 16
    # Top-down pathway: 1x1 laterals plus the upsampled coarser level, then a
    # 3x3 conv on each merged map (the FPN paper's design, in miniature).
    p16 = conv(self.channels, kernel=1)(c16)
    p8 = conv(self.channels, kernel=1)(c8) + upsample2(p16)
    p4 = conv(self.channels, kernel=1)(c4) + upsample2(p8)
    return [conv(self.channels)(p) for p in (p4, p8, p16)]


def upsample2(x: jax.Array) -> jax.Array:
  """Nearest-neighbour 2x upsampling of an NHWC map."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class Detector(nn.Module):
  """Backbone -> RoI pooling (jax_roi) -> MLP -> class logits and box deltas."""

  op: str = "roi_align"
  hidden: int = 256

  @nn.compact
  def __call__(self, images: jax.Array, boxes: jax.Array) -> tuple[jax.Array, jax.Array]:
    """images (N, S, S, 3), boxes (N, R, 4) xyxy in pixels -> (N, R, C), (N, R, 4)."""
    levels = Backbone(fpn=self.op == "multi_scale")(images)
    if self.op == "roi_pool":
      pooled = roi_nn.RoIPool(POOL_SIZE, spatial_scale=1 / 4, layout="NHWC")(levels[0], boxes)
    elif self.op == "roi_align":
      pooled = roi_nn.RoIAlign(
        POOL_SIZE, spatial_scale=1 / 4, sampling_ratio=2, aligned=True, layout="NHWC"
      )(levels[0], boxes)
    elif self.op == "multi_scale":
      # The FPN level mapping, scaled to these small images: boxes about 24
      # pixels across go to level 3 (stride 8), smaller ones to level 2
      # (stride 4), those of 48 pixels and more to level 4 (stride 16).
      pooled = roi_nn.MultiScaleRoIAlign(
        POOL_SIZE,
        spatial_scales=(1 / 4, 1 / 8, 1 / 16),
        sampling_ratio=2,
        aligned=True,
        canonical_scale=24,
        canonical_level=3,
        layout="NHWC",
      )(levels, boxes)
    else:
      raise ValueError(f"unknown op {self.op!r}")
    n, r = boxes.shape[:2]
    x = pooled.reshape(n, r, -1)  # (N, R, 7, 7, C) -> (N, R, 49 C)
    x = nn.relu(nn.Dense(self.hidden)(x))
    x = nn.relu(nn.Dense(self.hidden)(x))
    logits = nn.Dense(len(CLASSES))(x)
    deltas = nn.Dense(4, kernel_init=nn.initializers.normal(0.001))(x)
    return logits, deltas


# ----------------------------------------------------------------------------
# Training and evaluation
# ----------------------------------------------------------------------------


def smooth_l1(x: jax.Array, beta: float = 1 / 9) -> jax.Array:
  """Fast R-CNN's smooth L1 (torchvision's RoI heads use beta = 1/9)."""
  ax = jnp.abs(x)
  return jnp.where(ax < beta, 0.5 * x * x / beta, ax - 0.5 * beta)


def losses_and_metrics(model: Detector, params, images, boxes, labels, deltas):
  """The total loss and (classification loss, box loss, correct, labelled)."""
  logits, pred_deltas = model.apply(params, images, boxes)
  labelled = labels >= 0
  foreground = labels > 0
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
  cls_loss = jnp.sum(ce * labelled) / jnp.maximum(labelled.sum(), 1)
  box_loss = jnp.sum(smooth_l1(pred_deltas - deltas).sum(-1) * foreground) / jnp.maximum(
    foreground.sum(), 1
  )
  correct = jnp.sum((logits.argmax(-1) == labels) & labelled)
  return cls_loss + box_loss, (cls_loss, box_loss, correct, labelled.sum())


class TrainResult(NamedTuple):
  model: Detector
  params: dict
  losses: list[float]  # the loss of every training step
  epoch_losses: list[float]  # the mean loss of every epoch
  epoch_accuracies: list[float]  # the training RoI accuracy of every epoch


def progress_bar(prefix: str, done: int, total: int, text: str, width: int = 30) -> None:
  """Redraws a one-line progress bar (carriage return, no newline)."""
  filled = width * done // total
  bar = "=" * filled + (">" if filled < width else "") + "." * (width - filled - 1)
  sys.stdout.write(f"\r{prefix} [{bar}] {done:>{len(str(total))}}/{total}  {text}")
  sys.stdout.flush()


def train(
  op: str = "roi_align",
  steps: int = 600,
  seed: int = 0,
  train_images: int = 512,
  batch_size: int = 16,
  learning_rate: float = 2e-3,
  quiet: bool = False,
) -> TrainResult:
  """Trains a Detector on a fresh synthetic training set; returns it and its losses.

  Every epoch visits the training images once in a new order, with freshly
  jittered proposals. ``steps`` counts optimizer steps (the last epoch may be
  partial).
  """
  data = make_dataset(np.random.default_rng([seed, 0]), train_images)
  rng = np.random.default_rng([seed, 1])  # proposals and shuffling
  model = Detector(op=op)
  sample = make_proposals(rng, Dataset(*(a[:batch_size] for a in data)))
  params = model.init(jax.random.key(seed), data.images[:batch_size], sample.boxes)
  schedule = optax.warmup_cosine_decay_schedule(
    0.0, learning_rate, warmup_steps=max(1, min(50, steps // 10)), decay_steps=max(steps, 1)
  )
  optimizer = optax.adam(schedule)
  opt_state = optimizer.init(params)

  @jax.jit
  def train_step(params, opt_state, images, boxes, labels, deltas):
    grad_fn = jax.value_and_grad(losses_and_metrics, argnums=1, has_aux=True)
    (loss, (_, _, correct, labelled)), grads = grad_fn(model, params, images, boxes, labels, deltas)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, correct, labelled

  steps_per_epoch = train_images // batch_size
  epochs = math.ceil(steps / steps_per_epoch)
  losses, epoch_losses, epoch_accuracies = [], [], []
  for epoch in range(epochs):
    start = time.perf_counter()
    order = rng.permutation(train_images)
    proposals = make_proposals(rng, data)
    n_steps = min(steps_per_epoch, steps - len(losses))
    epoch_loss = correct = labelled = 0
    for i in range(n_steps):
      idx = order[i * batch_size : (i + 1) * batch_size]
      params, opt_state, loss, c, l = train_step(
        params,
        opt_state,
        data.images[idx],
        proposals.boxes[idx],
        proposals.labels[idx],
        proposals.deltas[idx],
      )
      losses.append(float(loss))
      epoch_loss += losses[-1]
      correct, labelled = correct + int(c), labelled + int(l)
      if not quiet:
        progress_bar(
          f"epoch {epoch + 1:>{len(str(epochs))}}/{epochs}",
          i + 1,
          n_steps,
          f"loss {epoch_loss / (i + 1):.3f}  RoI accuracy {correct / labelled:6.1%}",
        )
    epoch_losses.append(epoch_loss / n_steps)
    epoch_accuracies.append(correct / labelled)
    if not quiet:
      sys.stdout.write(f"  {time.perf_counter() - start:5.1f} s\n")
  return TrainResult(model, params, losses, epoch_losses, epoch_accuracies)


class Evaluation(NamedTuple):
  accuracy: float  # over labelled RoIs (foreground and background)
  background_share: float  # the accuracy of always answering "background"
  foreground_accuracy: float  # over foreground RoIs only
  proposal_iou: float  # mean IoU of the foreground proposals with their ground truth
  refined_iou: float  # the same after box regression
  scores: np.ndarray  # (N, R, C) class probabilities
  refined: np.ndarray  # (N, R, 4) proposals refined by the regression head


def evaluate(result: TrainResult, data: Dataset, proposals: Proposals) -> Evaluation:
  """RoI classification accuracy and box-regression gain on a held-out set."""
  logits, deltas = jax.jit(result.model.apply)(result.params, data.images, proposals.boxes)
  scores, deltas = np.asarray(jax.nn.softmax(logits)), np.asarray(deltas)
  refined = decode_deltas(proposals.boxes, deltas)
  labels, labelled, fg = proposals.labels, proposals.labels >= 0, proposals.labels > 0
  hits = scores.argmax(-1) == labels

  def iou_with_gt(boxes):
    return np.diagonal(box_iou(boxes, proposals.gt_boxes), axis1=-2, axis2=-1)[fg].mean()

  return Evaluation(
    float(hits[labelled].mean()),
    float((labels == 0).sum() / labelled.sum()),
    float(hits[fg].mean()),
    float(iou_with_gt(proposals.boxes)),
    float(iou_with_gt(refined)),
    scores,
    refined,
  )


def detections(
  scores: np.ndarray, boxes: np.ndarray, min_score: float = 0.5, nms_iou: float = 0.3, top: int = 5
) -> list[tuple[np.ndarray, int, float]]:
  """One image's top-scoring non-background boxes after greedy NMS.

  scores (R, C) and boxes (R, 4) -> up to ``top`` (box, class, score), best first.
  """
  cls, score = scores[:, 1:].argmax(-1) + 1, scores[:, 1:].max(-1)
  kept = []
  for r in np.argsort(-score):
    if score[r] < min_score or len(kept) == top:
      break
    if all(box_iou(boxes[r][None], boxes[k][None])[0, 0] < nms_iou for k in kept):
      kept.append(r)
  return [(boxes[r], int(cls[r]), float(score[r])) for r in kept]


def found_objects(
  gt_boxes: np.ndarray,
  gt_labels: np.ndarray,
  dets: list[tuple[np.ndarray, int, float]],
  iou: float = 0.5,
) -> np.ndarray:
  """Which ground-truth objects of one image a detection of the right class
  overlaps with IoU >= ``iou``: (MAX_OBJECTS,) bool, False for unused slots."""
  found = np.zeros(len(gt_labels), bool)
  for j, (gt, label) in enumerate(zip(gt_boxes, gt_labels)):
    found[j] = label > 0 and any(
      c == label and box_iou(b[None], gt[None])[0, 0] >= iou for b, c, _ in dets
    )
  return found


def save_detections(
  path: str, data: Dataset, evaluation: Evaluation, title: str, n_images: int = 8
) -> tuple[int, int]:
  """Draws test images with their detections (solid, class and score) and
  ground truth (dashed, class; magenta "MISSED" where no detection of its
  class overlaps it with IoU >= 0.5). Returns (missed, total) objects drawn."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  colours = {1: "tab:red", 2: "tab:cyan", 3: "yellow"}
  cols = 4
  rows = math.ceil(n_images / cols)
  missed = total = 0
  fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows + 0.4), squeeze=False)
  for i, ax in enumerate(axes.flat):
    ax.axis("off")
    if i >= n_images:
      continue
    ax.imshow(data.images[i], extent=(0, IMAGE_SIZE, IMAGE_SIZE, 0), interpolation="nearest")
    dets = detections(evaluation.scores[i], evaluation.refined[i])
    found = found_objects(data.boxes[i], data.labels[i], dets)
    for box, label, hit in zip(data.boxes[i], data.labels[i], found):
      if label > 0:
        total += 1
        missed += not hit
        ec = "white" if hit else "magenta"
        ax.add_patch(
          plt.Rectangle(
            box[:2], *(box[2:] - box[:2]), fill=False, ec=ec, lw=1 if hit else 2, ls="--"
          )
        )
        ax.text(
          box[0],
          box[3] + 1,
          CLASSES[label] + ("" if hit else " MISSED"),
          color=ec,
          fontsize=7,
          va="top",
        )
    for box, label, score in dets:
      ax.add_patch(
        plt.Rectangle(box[:2], *(box[2:] - box[:2]), fill=False, ec=colours[label], lw=2)
      )
      ax.text(
        box[0],
        box[1] - 1,
        f"{CLASSES[label]} {score:.2f}",
        color="black",
        fontsize=7,
        bbox=dict(facecolor=colours[label], alpha=0.8, pad=1, lw=0),
      )
    ax.set_xlim(0, IMAGE_SIZE)
    ax.set_ylim(IMAGE_SIZE, 0)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return missed, total


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--op",
    choices=("roi_pool", "roi_align", "multi_scale"),
    default="roi_align",
    help="the jax_roi layer (default: %(default)s)",
  )
  parser.add_argument(
    "--steps", type=int, default=600, help="training steps of 16 images (default: %(default)s)"
  )
  parser.add_argument("--seed", type=int, default=0, help="data and init seed (default: 0)")
  parser.add_argument(
    "--train-images", type=int, default=512, help="training set size (default: %(default)s)"
  )
  parser.add_argument(
    "--test-images", type=int, default=64, help="held-out set size (default: %(default)s)"
  )
  parser.add_argument(
    "--out",
    default="demo_detections.png",
    help="PNG of test detections (default: %(default)s in the current directory; git-ignored)",
  )
  parser.add_argument("--quiet", action="store_true", help="no per-epoch output")
  args = parser.parse_args(argv)
  if args.steps < 1 or args.train_images < 16 or args.test_images < 1:
    parser.error("--steps must be >= 1, --train-images >= 16, --test-images >= 1")
  return args


def run(argv: Sequence[str] | None = None) -> dict:
  """Trains, evaluates and draws; returns the losses and the held-out accuracy."""
  args = parse_args(argv)
  start = time.perf_counter()
  print(
    f"jax {jax.__version__} on {jax.devices()[0].platform}: --op {args.op}, "
    f"{args.train_images} training images ({IMAGE_SIZE}x{IMAGE_SIZE}), "
    f"{NUM_JITTERED + NUM_RANDOM} proposals each, {args.steps} steps of 16 images"
  )
  result = train(
    args.op, steps=args.steps, seed=args.seed, train_images=args.train_images, quiet=args.quiet
  )
  test = make_dataset(np.random.default_rng([args.seed, 2]), args.test_images)
  evaluation = evaluate(result, test, make_proposals(np.random.default_rng([args.seed, 3]), test))
  print(
    f"RoI classification accuracy on {args.test_images} held-out images: "
    f"{evaluation.accuracy:.1%} (target >= {TARGET_ACCURACY:.0%})"
  )
  print(
    f"  foreground RoIs only: {evaluation.foreground_accuracy:.1%}; "
    f"{evaluation.background_share:.0%} of the labelled RoIs are background"
  )
  print(
    f"  box regression: mean IoU of the foreground proposals with their ground truth "
    f"{evaluation.proposal_iou:.3f} -> {evaluation.refined_iou:.3f} after refinement"
  )
  missed, total = save_detections(
    args.out,
    test,
    evaluation,
    f"jax_roi {args.op}: held-out detections (dashed: ground truth, magenta: missed), "
    f"RoI accuracy {evaluation.accuracy:.1%}",
  )
  print(
    f"detections drawn in {os.path.abspath(args.out)} ({missed} of the {total} ground-truth"
    f" objects drawn missed); total time {time.perf_counter() - start:.1f} s"
  )
  return dict(
    losses=result.losses,
    epoch_losses=result.epoch_losses,
    accuracy=evaluation.accuracy,
    passed=evaluation.accuracy >= TARGET_ACCURACY,
    missed=missed,
    objects=total,
  )


def main(argv: Sequence[str] | None = None) -> int:
  summary = run(argv)
  if not summary["passed"]:
    print(f"FAILED: accuracy below the {TARGET_ACCURACY:.0%} target", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
