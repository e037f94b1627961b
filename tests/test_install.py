"""Installing as a user does: pip, into a new virtual environment that already holds torch.

Run by `make test-install` (VL_INSTALL_TEST=1); under a plain `pytest tests` every test here is
skipped, since each install compiles the extension (a minute or two). What is checked:
  * from a fresh clone: `pip install <clone>` (pip's isolated build) stops within seconds with
    the command to type; the README's `pip install --no-build-isolation <clone>` installs, and a
    forward/backward from the installed package matches torch; `python -m validated_loss` and
    the installed metadata name the torch it was built for;
  * that installed build imported by another torch (the torch 2.14.1 of .venv-cuda, made by
    `make cuda-check`): the mismatch warning with both versions and the rebuild command;
  * the sdist: `python -m build --sdist` needs no torch, an isolated `python -m build --wheel`
    stops at once naming --no-isolation, and the sdist installs with the README's command into
    another new environment.
The torch installed is TORCH_SPEC (default torch==2.13.0, a wheel on this machine's disk).
"""

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TORCH_SPEC = os.environ.get("TORCH_SPEC", "torch==2.13.0")
OTHER_TORCH_PYTHON = Path(os.environ.get("VL_OTHER_TORCH_PYTHON", ROOT / ".venv-cuda" / "bin" / "python"))

pytestmark = pytest.mark.skipif(os.environ.get("VL_INSTALL_TEST") != "1",
                                reason="installs into new virtual environments (minutes): make test-install")

# A user's environment: none of the build's switches, nothing of this checkout on the path.
USER_ENV = {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "VIRTUAL_ENV", "FORCE_CUDA", "FORCE_ONLY_CPU", "TORCH_CUDA_ARCH_LIST")}

FORWARD_BACKWARD = """
import torch, torch.nn.functional as F, validated_loss as vl
assert vl.__file__.startswith(__import__("sys").prefix), vl.__file__  # the installed copy
logits = torch.randn(64, 1000, dtype=torch.float64, requires_grad=True)
target = torch.randint(0, 1000, (64,))
target[3] = -100
loss = vl.CrossEntropyLoss(label_smoothing=0.1)(logits, target)
(grad,) = torch.autograd.grad(loss, logits)
ref = F.cross_entropy(logits, target, label_smoothing=0.1)
(ref_grad,) = torch.autograd.grad(ref, logits)
torch.testing.assert_close(loss, ref)
torch.testing.assert_close(grad, ref_grad)
print("forward/backward match torch", torch.__version__)
"""


def run(args, cwd, timeout=900):
    start = time.monotonic()
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=USER_ENV, capture_output=True, text=True,
                            timeout=timeout)
    result.seconds = time.monotonic() - start
    result.output = result.stdout + result.stderr
    return result


def new_venv(path):
    """A new virtual environment holding pip and TORCH_SPEC (and what torch depends on)."""
    run([sys.executable, "-m", "venv", path], cwd=path.parent).check_returncode()
    result = run([path / "bin" / "pip", "install", "-q", TORCH_SPEC], cwd=path.parent)
    assert result.returncode == 0, result.output
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("install")


@pytest.fixture(scope="module")
def clone(work):
    path = work / "validated_loss clone"  # a space in the path, as some users' have
    run(["git", "clone", "-q", ROOT, path], cwd=work).check_returncode()
    return path


@pytest.fixture(scope="module")
def venv(work):
    return new_venv(work / "venv")


def test_isolated_pip_install_stops_at_once_with_the_command(venv, clone, work):
    result = run([venv / "bin" / "pip", "install", clone], cwd=work)
    assert result.returncode != 0
    assert result.seconds < 60, f"took {result.seconds:.0f} s: it should stop before compiling"
    assert "this build cannot import torch" in result.output
    expected = f"{venv}/bin/pip install --no-build-isolation '{clone}'"
    assert expected in result.output, result.output
    assert "Traceback" not in result.output
    assert run([venv / "bin" / "pip", "show", "validated_loss"], cwd=work).returncode != 0


@pytest.fixture(scope="module")
def installed(venv, clone, work):
    """The README's command, from the clone."""
    result = run([venv / "bin" / "pip", "install", "--no-build-isolation", clone], cwd=work)
    assert result.returncode == 0, result.output[-5000:]
    print(f"pip install --no-build-isolation <clone>: {result.seconds:.0f} s")
    return venv


def test_installed_package_computes_like_torch(installed, work):
    result = run([installed / "bin" / "python", "-c", FORWARD_BACKWARD], cwd=work)
    assert result.returncode == 0, result.output
    assert "forward/backward match torch 2.13.0" in result.stdout


def test_installed_package_names_its_torch(installed, work, clone):
    result = run([installed / "bin" / "python", "-m", "validated_loss"], cwd=work)
    assert result.returncode == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1] == ("torch 2.13.0+cpu running (CPU build of torch), inside the tested range "
                        f"{torch_range()}")
    assert lines[2] == "built against torch 2.13.0+cpu (CPU build of torch)"
    assert "mismatch" not in result.stdout and "TorchMismatchWarning" not in result.stderr
    metadata = next((installed / "lib").glob("python3*/site-packages/validated_loss-*.dist-info/METADATA"))
    assert "Requires-Dist: torch==2.13.*" in metadata.read_text().splitlines()
    # The rebuild command the warning would give: pip's own record of where it came from.
    code = "from validated_loss import _torch_support as t; print(t.rebuild_command())"
    result = run([installed / "bin" / "python", "-c", code], cwd=work)
    assert result.stdout.strip() == (f"{installed}/bin/python -m pip install --no-build-isolation --force-reinstall "
                                     f"--no-deps --no-cache-dir '{clone}'")


def torch_range():
    """From the source, by path: importing the package here would need the in-tree build."""
    spec = importlib.util.spec_from_file_location("_vl_torch_support", ROOT / "validated_loss" / "_torch_support.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return f"{module.TESTED_OLDEST} .. {module.TESTED_NEWEST}"


def test_another_torch_gets_the_mismatch_warning(installed, work):
    assert OTHER_TORCH_PYTHON.is_file(), \
        f"no Python with another torch at {OTHER_TORCH_PYTHON} (make cuda-check makes it)"
    # The installed package alone on the path of a Python whose torch is another release.
    (package,) = (installed / "lib").glob("python3*/site-packages/validated_loss")
    shutil.copytree(package, work / "elsewhere" / "validated_loss")
    env_path = work / "elsewhere"
    code = "import torch; print(torch.__version__); import validated_loss"
    result = subprocess.run([str(OTHER_TORCH_PYTHON), "-c", code], cwd=env_path, capture_output=True, text=True,
                            env=dict(USER_ENV, PYTHONPATH=str(env_path)))
    other = result.stdout.split()[0]
    assert not other.startswith("2.13."), "the other Python runs the same torch minor release"
    assert result.returncode == 0, result.stderr
    assert "TorchMismatchWarning" in result.stderr
    assert f"it was compiled against torch 2.13.0+cpu but torch {other} is running" in result.stderr
    assert "Rebuild it against this torch:\n  " in result.stderr
    print(result.stderr)


def test_sdist_installs_with_the_readme_command(installed, clone, work):
    pip = installed / "bin" / "pip"
    assert run([pip, "install", "-q", "build"], cwd=work).returncode == 0
    python = installed / "bin" / "python"
    dist = work / "dist"
    # The sdist is made in build's isolated environment: it needs no torch.
    result = run([python, "-m", "build", "--sdist", "--outdir", dist, clone], cwd=work)
    assert result.returncode == 0, result.output
    (sdist,) = dist.glob("validated_loss-*.tar.gz")
    # A wheel made in isolation would be built against a torch pip downloads: it stops at once.
    result = run([python, "-m", "build", "--wheel", "--outdir", dist, clone], cwd=work)
    assert result.returncode != 0 and result.seconds < 60
    assert f"{python} -m build --no-isolation --wheel --outdir {dist} '{clone}'" in result.output, result.output
    # The README's command on the sdist, in another new environment.
    venv2 = new_venv(work / "venv2")
    result = run([venv2 / "bin" / "pip", "install", "--no-build-isolation", sdist], cwd=work)
    assert result.returncode == 0, result.output[-5000:]
    print(f"pip install --no-build-isolation <sdist>: {result.seconds:.0f} s")
    result = run([venv2 / "bin" / "python", "-c", FORWARD_BACKWARD], cwd=work)
    assert result.returncode == 0, result.output
