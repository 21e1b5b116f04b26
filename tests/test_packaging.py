"""Packaging facts: the version, the typing marker, the strictness of the
type check on every public module."""

from __future__ import annotations

import pathlib
import re
import tomllib

import jax_roi

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = pathlib.Path(jax_roi.__file__).parent


def test_version_is_the_one_the_build_reads():
  # scikit-build-core's regex provider reads jax_roi/_version.py (pyproject);
  # an installed jax_roi reports its metadata's, a source tree this file's.
  source = (PACKAGE / "_version.py").read_text()
  assert jax_roi.__version__ == re.search(r'__version__ = "([^"]+)"', source).group(1)
  assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)*", jax_roi.__version__)


def test_the_package_is_typed():
  assert (PACKAGE / "py.typed").is_file()


def test_every_public_module_is_fully_annotated_by_mypy_config():
  config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
  strict = {m for o in config["overrides"] if o.get("disallow_untyped_defs") for m in o["module"]}
  public = {"jax_roi"} | {
    f"jax_roi.{p.stem}" for p in PACKAGE.glob("*.py") if not p.stem.startswith("_")
  }
  assert public <= strict, sorted(public - strict)
