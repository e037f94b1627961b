"""The torch-version facts and the build's decisions, without building anything.

validated_loss/_torch_support.py (import-time check, tested range, rebuild command) and setup.py's
pure parts (the command shown to an isolated build, the CUDA plan, the torch requirement), plus
the import-time warning and load error as a user meets them, on a copy of the built package
whose build record names another torch. The real installs are in tests/test_install.py.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from validated_loss import _torch_support as ts

ROOT = Path(__file__).resolve().parent.parent


def build(torch_version="2.13.0+cpu", torch_cuda=None, cuda=False, archs=None, note="torch is a CPU-only build"):
    return types.SimpleNamespace(TORCH_VERSION=torch_version, TORCH_CUDA=torch_cuda, CUDA=cuda, CUDA_ARCHS=archs,
                                 CUDA_NOTE=note)


@pytest.mark.parametrize("version, expected", [
    ("2.13.0+cpu", (2, 13, 0)), ("2.14.1", (2, 14, 1)), ("2.15.0.dev20270101+cu130", (2, 15, 0)), ("2.6", (2, 6, 0)),
])
def test_release(version, expected):
    assert ts.release(version) == expected


@pytest.mark.parametrize("version, inside", [
    ("2.5.1", False), ("2.6.0", True), ("2.6.0+cu124", True), ("2.11.0", True), ("2.14.1+cpu", True),
    ("2.14.2", False), ("2.15.0.dev20270101", False),
])
def test_tested_range(version, inside):
    assert ts.in_tested_range(version) is inside
    assert ts.range_text(version).startswith("inside" if inside else "OUTSIDE")


def test_same_minor_release_is_no_mismatch():
    assert ts.mismatches(build("2.13.0+cpu"), "2.13.1+cpu", None, has_gpu=False) == []


def test_another_minor_release_is_named():
    (problem,) = ts.mismatches(build("2.14.1"), "2.13.0+cpu", None, has_gpu=False)
    assert "compiled against torch 2.14.1 but torch 2.13.0+cpu is running" in problem


def test_another_cuda_major_version_is_named():
    built = build("2.11.0", torch_cuda="12.8", cuda=True, archs="8.0;9.0+PTX", note=None)
    (problem,) = ts.mismatches(built, "2.11.0+cu130", "13.0", has_gpu=True)
    assert "compiled for CUDA 12.8, but the running torch uses CUDA 13.0" in problem
    assert ts.mismatches(built, "2.11.0", "12.6", has_gpu=True) == []


def test_cpu_only_build_on_a_gpu_machine():
    built = build("2.14.1", torch_cuda="13.0", note="no CUDA toolkit found (nvcc; set CUDA_HOME to one)")
    (problem,) = ts.mismatches(built, "2.14.1", "13.0", has_gpu=True)
    assert "no CUDA kernels (no CUDA toolkit found" in problem and "NVIDIA GPU" in problem
    assert ts.mismatches(built, "2.14.1", "13.0", has_gpu=False) == []
    # A CPU build of torch cannot use the GPU anyway: nothing to rebuild for.
    assert ts.mismatches(built, "2.14.1+cpu", None, has_gpu=True) == []


def test_hidden_gpus_are_not_visible(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert ts.gpu_visible() is False


@pytest.mark.parametrize("source, expected", [
    (("path", "/home/me/validated_loss"), "--no-cache-dir /home/me/validated_loss"),
    (("vcs", "git+https://example.org/vl.git@0123abc"), "--no-cache-dir git+https://example.org/vl.git@0123abc"),
    (("editable", "/home/me/vl"), "--no-cache-dir -e /home/me/vl"),
    (("index", None), "--no-cache-dir --no-binary validated_loss validated_loss"),
    (None, "<the path, git URL or sdist you installed validated_loss from>"),
])
def test_rebuild_command_reinstalls_from_where_it_came(monkeypatch, tmp_path, source, expected):
    monkeypatch.setattr(ts, "_installed_source", lambda: source)
    command = ts.rebuild_command(tmp_path / "site-packages" / "validated_loss")
    assert command.startswith(f"{sys.executable} -m pip install --no-build-isolation --force-reinstall --no-deps")
    assert command.endswith(expected)


@pytest.mark.parametrize("direct_url, expected", [
    ('{"url": "file:///home/me/my%20clone", "dir_info": {}}', ("path", "/home/me/my clone")),
    ('{"url": "file:///home/me/vl", "dir_info": {"editable": true}}', ("editable", "/home/me/vl")),
    ('{"url": "https://example.org/vl.git", "vcs_info": {"vcs": "git", "commit_id": "0123abc"}}',
     ("vcs", "git+https://example.org/vl.git@0123abc")),
    ('{"url": "file:///tmp/validated_loss-0.1.0.tar.gz", "archive_info": {}}',
     ("path", "/tmp/validated_loss-0.1.0.tar.gz")),
    (None, ("index", None)),
])
def test_where_pip_installed_it_from(direct_url, expected):
    assert ts.source_from_direct_url(direct_url) == expected


def test_rebuild_command_in_a_source_tree(monkeypatch):
    monkeypatch.setattr(ts, "_installed_source", lambda: None)
    command = ts.rebuild_command(ROOT / "validated_loss")
    assert command == f"cd {ROOT} && {sys.executable} setup.py build_ext --inplace --force"


# --- setup.py's decisions --------------------------------------------------------------------

@pytest.fixture(scope="module")
def setup_py():
    """setup.py as a module: its setup() call runs only as __main__."""
    spec = importlib.util.spec_from_file_location("vl_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("argv, expected", [
    (["/v/bin/python3.11", "/v/bin/pip", "install", "."], "/v/bin/pip install --no-build-isolation ."),
    (["python", "-m", "pip", "install", "-U", "git+https://example.org/vl.git"],
     "python -m pip install --no-build-isolation -U git+https://example.org/vl.git"),
    (["/usr/bin/uv", "pip", "install", "dist/vl.tar.gz"],
     "/usr/bin/uv pip install --no-build-isolation dist/vl.tar.gz"),
    (["/v/bin/python", "/v/bin/pip3", "wheel", "/src/my vl"], "/v/bin/pip3 wheel --no-build-isolation '/src/my vl'"),
    (["/v/bin/python", "-m", "build", "--wheel"], "/v/bin/python -m build --no-isolation --wheel"),
    (["/v/bin/python", "/v/bin/pyproject-build"], "/v/bin/pyproject-build --no-isolation"),
    (["make", "install"], None),
    (["/v/bin/pip", "list"], None),
])
def test_the_command_an_isolated_build_shows(setup_py, argv, expected):
    assert setup_py.command_without_isolation(argv) == expected


def fake_torch(version, cuda):
    return types.SimpleNamespace(__version__=version, version=types.SimpleNamespace(cuda=cuda),
                                 cuda=types.SimpleNamespace(is_available=lambda: False))


@pytest.fixture
def fake_cuda_home(tmp_path):
    """A CUDA_HOME whose bin/nvcc reports release 13.0, as nvcc --version does."""
    nvcc = tmp_path / "bin" / "nvcc"
    nvcc.parent.mkdir()
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 13.0, V13.0.88'\n")
    nvcc.chmod(0o755)
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "cuda_runtime.h").write_text("")
    return str(tmp_path)


def test_cuda_toolkit_behind_a_linked_nvcc(setup_py, clean_env, fake_cuda_home, tmp_path_factory):
    """torch guesses the directory above the nvcc on PATH; where that is a link, the toolkit is
    where it leads."""
    bin_dir = tmp_path_factory.mktemp("usr_local") / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvcc").symlink_to(Path(fake_cuda_home) / "bin" / "nvcc")
    clean_env.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    assert setup_py.cuda_toolkit(str(bin_dir.parent)) == str(Path(fake_cuda_home).resolve())
    assert setup_py.cuda_toolkit(fake_cuda_home) == fake_cuda_home
    clean_env.setenv("CUDA_HOME", "/opt/my-cuda")  # the user's choice stands; cuda_plan judges it
    assert setup_py.cuda_toolkit(fake_cuda_home) == "/opt/my-cuda"
    assert "is not a CUDA toolkit" in setup_py.cuda_plan(fake_torch("2.14.1", "13.0"), "/opt/my-cuda")[1]


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("FORCE_CUDA", "FORCE_ONLY_CPU", "TORCH_CUDA_ARCH_LIST", "CUDA_HOME", "CUDA_PATH"):
        monkeypatch.setenv(name, "")  # recorded, so whatever the code under test sets is undone
        monkeypatch.delenv(name)
    return monkeypatch


def test_cuda_kernels_built_with_nvcc_of_torch_major_version(setup_py, clean_env, fake_cuda_home):
    assert setup_py.cuda_plan(fake_torch("2.14.1", "13.0"), fake_cuda_home) == (True, None)


@pytest.mark.parametrize("torch_cuda, cuda_home, reason", [
    (None, "fixture", "torch 2.13.0 is a CPU-only build"),
    ("13.0", None, "no CUDA toolkit found"),
    ("12.4", "fixture", "is CUDA 13.0 but torch 2.13.0 is built for CUDA 12.4 (set CUDA_HOME to a CUDA 12 toolkit)"),
])
def test_cpu_only_build_says_why(setup_py, clean_env, fake_cuda_home, capsys, torch_cuda, cuda_home, reason):
    home = fake_cuda_home if cuda_home == "fixture" else cuda_home
    cuda, note = setup_py.cuda_plan(fake_torch("2.13.0", torch_cuda), home)
    assert cuda is False and reason in note
    assert f"building without CUDA kernels: {note}" in capsys.readouterr().err
    clean_env.setenv("FORCE_CUDA", "1")
    with pytest.raises(SystemExit):
        setup_py.cuda_plan(fake_torch("2.13.0", torch_cuda), home)
    assert f"FORCE_CUDA=1 but {note}" in capsys.readouterr().err


def test_force_only_cpu(setup_py, clean_env, fake_cuda_home):
    clean_env.setenv("FORCE_ONLY_CPU", "1")
    assert setup_py.cuda_plan(fake_torch("2.14.1", "13.0"), fake_cuda_home) == (False, "FORCE_ONLY_CPU=1")


def test_no_gpu_visible_builds_the_default_architectures(setup_py, clean_env, capsys):
    assert setup_py.cuda_archs(fake_torch("2.14.1", "13.0")) == ts.DEFAULT_CUDA_ARCHS
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == ts.DEFAULT_CUDA_ARCHS  # what torch compiles for
    assert "no GPU visible" in capsys.readouterr().err
    clean_env.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    assert setup_py.cuda_archs(fake_torch("2.14.1", "13.0")) == "9.0"


def test_torch_requirement(setup_py, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["setup.py", "bdist_wheel"])
    assert setup_py.torch_requirement(fake_torch("2.13.0+cpu", None)) == "torch==2.13.*"
    assert setup_py.torch_requirement(None) == f"torch>={ts.TESTED_OLDEST}"
    monkeypatch.setattr(sys, "argv", ["setup.py", "sdist"])
    assert setup_py.torch_requirement(fake_torch("2.13.0+cpu", None)) == f"torch>={ts.TESTED_OLDEST}"


# --- at import, as a user meets it -----------------------------------------------------------

def copy_of_package(tmp_path, **build_info):
    """The built package copied to tmp_path, its build record changed as given."""
    built = ROOT / "validated_loss"
    if not list(built.glob("_C*.so")):
        pytest.fail("validated_loss._C is not built (make build)")
    target = tmp_path / "validated_loss"
    shutil.copytree(built, target, ignore=shutil.ignore_patterns("__pycache__"))
    info = target / "_build_info.py"
    text = info.read_text()
    for name, value in build_info.items():
        lines = [f"{name} = {value!r}" if line.startswith(f"{name} = ") else line for line in text.splitlines()]
        text = "\n".join(lines) + "\n"
    info.write_text(text)
    return target


def run_python(code, path, *args):
    env = dict(os.environ, PYTHONPATH=str(path))
    return subprocess.run([sys.executable, *args, "-c", code] if code else [sys.executable, *args],
                          capture_output=True, text=True, env=env, cwd=path)


def test_import_warns_once_about_another_torch(tmp_path):
    copy_of_package(tmp_path, TORCH_VERSION="2.11.0")
    code = ("import warnings\nwith warnings.catch_warnings(record=True) as seen:\n"
            "    warnings.simplefilter('always')\n    import validated_loss, validated_loss.loss\n"
            "    import importlib; importlib.import_module('validated_loss')\n"
            "mine = [str(w.message) for w in seen if w.category.__name__ == 'TorchMismatchWarning']\n"
            "print(len(mine)); print(mine[0])")
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    count, message = result.stdout.split("\n", 1)
    assert count == "1"
    import torch

    assert f"compiled against torch 2.11.0 but torch {torch.__version__} is running" in message
    assert "Rebuild it against this torch:\n  " in message and "--no-build-isolation" in message


def test_python_m_shows_both_torches_and_the_range(tmp_path):
    copy_of_package(tmp_path, TORCH_VERSION="2.11.0")
    result = run_python(None, tmp_path, "-W", "ignore", "-m", "validated_loss")
    assert result.returncode == 0, result.stderr
    import torch

    lines = result.stdout.splitlines()
    assert lines[1].startswith(f"torch {torch.__version__} running") and "inside the tested range" in lines[1]
    assert lines[2].startswith("built against torch 2.11.0")
    assert lines[3].startswith("  mismatch: it was compiled against torch 2.11.0")
    assert lines[4].startswith("  rebuild: ")


def test_matching_build_imports_without_warning(tmp_path):
    copy_of_package(tmp_path)
    code = ("import warnings\nwarnings.simplefilter('error')\nimport validated_loss\nprint('ok')")
    result = run_python(code, tmp_path)
    assert result.returncode == 0 and result.stdout == "ok\n", result.stderr


def test_extension_that_cannot_load_names_both_torches(tmp_path):
    package = copy_of_package(tmp_path, TORCH_VERSION="2.14.1", TORCH_CUDA="13.0", CUDA=True, CUDA_ARCHS="8.0;9.0+PTX")
    for so in package.glob("_C*.so"):
        so.write_bytes(b"not a shared library")
    result = run_python("import validated_loss", tmp_path, "-W", "ignore")
    assert result.returncode != 0
    assert "ImportError: validated_loss's compiled extension cannot be loaded into the running torch" in result.stderr
    assert "built against torch 2.14.1 (CUDA 13.0 build of torch), with CUDA kernels (8.0;9.0+PTX)" in result.stderr
    assert "Rebuild it against this torch:" in result.stderr
