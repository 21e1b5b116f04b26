"""The tools run: the GPU comparison (CPU against itself, as on a machine
without a GPU), a short differential-fuzzing run, and the GPU check's plan."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _run(*args, timeout=300, env=None):
  return subprocess.run(
    list(args),
    capture_output=True,
    text=True,
    timeout=timeout,
    cwd=ROOT,
    env=None if env is None else {**os.environ, **env},
  )


def test_gpu_compare_runs_on_the_cpu():
  result = _run(sys.executable, "tools/gpu_compare.py", "--platform", "cpu", "--small")
  assert result.returncode == 0, result.stdout + result.stderr
  assert "5/5 cases agree" in result.stdout, result.stdout


@pytest.mark.slow  # (~17 s)
def test_fuzzer_finds_nothing_in_a_short_run(tmp_path):
  result = _run(
    sys.executable, "tools/fuzz.py", "--op", "all", "--minutes", "0.02", "--out", str(tmp_path)
  )
  assert result.returncode == 0, result.stdout + result.stderr
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary["failures"] == 0
  assert set(summary["ops"]) == {
    "roi_pool",
    "roi_align",
    "multi_scale",
    "ps_roi_pool",
    "ps_roi_align",
    "roi_align_rotated",
    "prroi_pool",
  }
  assert all(op["cases"] > 0 for op in summary["ops"].values())


def test_gpu_check_plans_every_quick_step(tmp_path):
  # RESULTS_DIR: never the dated folder under benchmarks/results (committed results)
  result = _run("bash", "tools/gpu_check.sh", "--dry-run", env={"RESULTS_DIR": str(tmp_path)})
  assert result.returncode == 0, result.stdout + result.stderr
  assert (tmp_path / "summary.txt").is_file()
  for step in ("install", "compare", "sanitizer", "no-cmdbuf", "benchmark"):
    assert step in result.stdout


# ---------------------------------------------------------------------------
# tools/_env.sh, which tools/run_tests.sh and tools/run_demo.sh source: its
# functions, run hermetically (nothing is built here).
# ---------------------------------------------------------------------------

BUILD_SETTINGS = ("JAX_ROI", "JAX_SPEC", "EXTRAS", "CMAKE", "CUDA", "XLA_FFI")


def _env_functions(script: str, cwd=ROOT, env=None, env_sh=ROOT / "tools" / "_env.sh", clean=False):
  """Runs ``script`` in bash after sourcing _env.sh's functions only
  (``clean``: without this process's build settings, e.g. CI's)."""
  code = f'JAX_ROI_ENV_FUNCTIONS_ONLY=1 source "{env_sh}"\n{script}'
  base = {k: v for k, v in os.environ.items() if not (clean and k.startswith(BUILD_SETTINGS))}
  return subprocess.run(
    ["bash", "-c", code],
    capture_output=True,
    text=True,
    timeout=120,
    cwd=cwd,
    env={**base, **(env or {})},
  )


def _fake_pyenv(tmp_path, version="3.13"):
  """A pyenv whose shim python<version> fails as pyenv's do for an installed
  but unselected version, and whose versions/ holds a working interpreter."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  name = f"python{version}"
  shim = bin_dir / name
  shim.write_text(f"#!/bin/sh\necho 'pyenv: {name}: command not found' >&2\nexit 127\n")
  pyenv = bin_dir / "pyenv"
  pyenv.write_text(f'#!/bin/sh\n[ "$1" = root ] && echo {tmp_path / "pyenv"}\n')
  real = tmp_path / "pyenv" / "versions" / f"{version}.0" / "bin" / name
  real.parent.mkdir(parents=True)
  real.symlink_to(sys.executable)
  for f in (shim, pyenv):
    f.chmod(0o755)
  return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}, real


def test_a_pyenv_python_that_is_not_selected_is_found(tmp_path):
  env, real = _fake_pyenv(tmp_path)
  result = _env_functions('resolve_python python3.13 && echo "$PYTHON $PY_VERSION"', env=env)
  assert result.returncode == 0, result.stderr
  version = "{}.{}".format(*sys.version_info[:2])  # the fake 3.13 runs this interpreter
  assert result.stdout.strip().splitlines()[-1] == f"{real} {version}"
  assert "not among pyenv's selected versions" in result.stdout


def test_a_python_that_cannot_run_gets_the_scripts_message(tmp_path):
  """The issue's case: `command -v` finds the shim, which then fails with
  exit 127; the script says what to do instead, with exit status 1."""
  env, _ = _fake_pyenv(tmp_path, "3.13")
  (tmp_path / "pyenv" / "versions" / "3.13.0" / "bin" / "python3.13").unlink()
  result = _run(
    "bash",
    "tools/run_tests.sh",
    env={**env, "PYTHON": "python3.13", "VENV": str(tmp_path / "venv")},
  )
  assert result.returncode == 1, result.stdout + result.stderr
  assert result.stderr.startswith("error: cannot run python3.13 (set PYTHON to a Python 3.11+")
  assert "command not found" not in result.stderr
  assert not (tmp_path / "venv").exists()
  old = tmp_path / "python3.9"
  old.write_text("#!/bin/sh\necho 3.9\n")
  old.chmod(0o755)
  result = _env_functions(f'resolve_python "{old}"')
  assert result.returncode == 1 and "needs Python 3.11 or newer" in result.stderr


def _git_tree(tmp_path):
  """A miniature checkout: the script plus a few source and other files."""
  root = tmp_path / "repo"
  for rel, text in {
    "tools/_env.sh": (ROOT / "tools" / "_env.sh").read_text(),
    "CMakeLists.txt": "project(x)\n",
    "pyproject.toml": "[project]\n",
    "csrc/a.cc": "int a;\n",
    "jax_roi/__init__.py": "\n",
    "README.md": "# x\n",
    "tests/test_x.py": "\n",
    ".gitignore": "*.so\n",
  }.items():
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)
  git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
  subprocess.run([*git, "init", "-q"], cwd=root, check=True)
  subprocess.run([*git, "add", "."], cwd=root, check=True)
  subprocess.run([*git, "commit", "-qm", "x"], cwd=root, check=True)
  return root


def test_the_build_key_follows_sources_and_options_only(tmp_path):
  root = _git_tree(tmp_path)

  def key(**env):
    result = _env_functions(
      "build_key", cwd=root, env=env, env_sh=root / "tools" / "_env.sh", clean=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()

  base = key()
  assert len(base) == 64
  (root / "README.md").write_text("# changed\n")
  (root / "tests" / "test_x.py").write_text("changed\n")
  (root / "jax_roi" / "_jax_roi.so").write_text("a build output, git-ignored\n")
  assert key() == base  # documentation, tests and build outputs do not count
  assert key(JAX_ROI_CPU_THREADS="3", JAX_ROI_REBUILD="0") == base  # run-time settings
  assert key(JAX_ROI_CPU_VARIANT="baseline") == base
  assert key(JAX_ROI_CPU_VARIANTS="x86-64-v4") != base  # a build option
  assert key(JAX_ROI_CUDA="OFF") != base and key(JAX_SPEC="jax==0.10.2") != base
  assert key(JAX_ROI_CUDA="AUTO") == base  # the default, spelled out
  (root / "csrc" / "a.cc").write_text("int a = 1;\n")  # an edited tracked source
  edited = key()
  assert edited != base
  (root / "csrc" / "b.cc").write_text("int b;\n")  # a new, untracked source
  assert key() not in (base, edited)


def test_up_to_date_needs_the_same_key_an_importable_build_and_no_request(tmp_path):
  venv = tmp_path / "venv"
  (venv / "bin").mkdir(parents=True)
  python = venv / "bin" / "python"
  python.write_text("#!/bin/sh\nexit 0\n")  # `import jax_roi._jax_roi` succeeds
  python.chmod(0o755)
  (venv / ".jax_roi-build-key").write_text("k1\n")
  (venv / ".jax_roi-extras").write_text("test\n")

  def up_to_date(key, extras="test", **env):
    env = {"VENV": str(venv), "EXTRAS": extras, **env}
    return _env_functions(f"up_to_date {key}", env=env).returncode == 0

  assert up_to_date("k1")
  assert not up_to_date("k2")  # a source or an option changed
  assert not up_to_date("k1", JAX_ROI_REBUILD="1")  # asked for
  assert not up_to_date("k1", extras="demo")  # the demo's extra is not installed yet
  (venv / ".jax_roi-extras").write_text("demo\ntest\n")
  assert up_to_date("k1", extras="demo") and up_to_date("k1", extras="test,demo")
  python.write_text("#!/bin/sh\nexit 1\n")  # the extension does not import
  assert not up_to_date("k1")


def test_the_build_progress_shows_ninja_steps_and_pip_milestones():
  log = (
    "Collecting jax<0.13\n"
    "  [1/15] Building CXX object CMakeFiles/_jax_roi.dir/csrc/core/registry.cc.o\n"
    "  -- Configuring done\n"
    "  [15/15] Linking CXX shared module _jax_roi.cpython-312-x86_64-linux-gnu.so\n"
    "Successfully installed jax-roi-0.1.0\n"
  )
  result = subprocess.run(
    [
      "bash",
      "-c",
      f'JAX_ROI_ENV_FUNCTIONS_ONLY=1 source "{ROOT / "tools" / "_env.sh"}"; show_progress',
    ],
    input=log,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert result.stdout.splitlines() == [
    "   [1/15] CMakeFiles/_jax_roi.dir/csrc/core/registry.cc.o",
    "   [15/15] _jax_roi.cpython-312-x86_64-linux-gnu.so",
    "   Successfully installed jax-roi-0.1.0",
  ]


def test_an_unchanged_environment_is_not_rebuilt():
  """In an environment that tools/_env.sh built (CI's), sourcing it again
  with the same options reports it up to date instead of rebuilding."""
  venv = pathlib.Path(sys.prefix)
  stamp = venv / ".jax_roi-build-key"
  if not stamp.is_file():
    pytest.skip("not running in an environment built by tools/_env.sh")
  key = _env_functions("build_key").stdout.strip()
  if key != stamp.read_text().strip():  # never rebuild under the running tests
    pytest.skip("the sources or build options changed since this environment's build")
  result = _run(
    "bash",
    "tools/run_tests.sh",
    "--version",
    timeout=120,
    env={"VENV": str(venv), "PYTHON": sys.executable},
  )
  assert result.returncode == 0, result.stdout + result.stderr
  assert f" in {venv} is up to date" in result.stdout
  assert "== building" not in result.stdout
