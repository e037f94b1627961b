"""Which torch validated_loss supports, and whether the running torch suits the compiled extension.

validated_loss._C is C++ compiled against one torch's headers and libraries. torch promises no C++
ABI between minor releases, and a CUDA build links the CUDA runtime of the torch it was built
with, so the facts setup.py records (_build_info) are compared with the running torch at import.

This file imports nothing costly (it runs at every `import validated_loss`) and nothing from the
package: setup.py loads it by path, before anything is built, for the same facts.
"""

import glob
import os
import re
import shlex
import sys
from pathlib import Path

# The torch releases CI builds and tests on. The oldest is also the lower bound of the
# dependency on torch that setup.py writes into the package's metadata.
TESTED_OLDEST = "2.6.0"
TESTED_NEWEST = "2.14.1"

# The architectures the CUDA kernels are compiled for when no GPU is visible at build time and
# TORCH_CUDA_ARCH_LIST is unset: sm_80 code runs on every 8.x GPU (A100, A10, RTX 30xx/40xx, L4,
# L40), sm_90 on H100/H200, and the compute_90 PTX is compiled by the driver for newer GPUs.
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"

PACKAGE = "validated_loss"


def release(version):
    """(major, minor, patch) of a torch version string: '2.13.0+cpu' -> (2, 13, 0)."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version or "")
    if match is None:
        raise ValueError(f"not a version: {version!r}")
    return tuple(int(part or 0) for part in match.groups())


def same_minor(version_a, version_b):
    """Whether two torch versions are the same minor release ('2.13.0+cpu', '2.13.1': yes)."""
    return release(version_a)[:2] == release(version_b)[:2]


def in_tested_range(version):
    return release(TESTED_OLDEST) <= release(version) <= release(TESTED_NEWEST)


def range_text(version):
    where = "inside" if in_tested_range(version) else "OUTSIDE"
    return f"{where} the tested range {TESTED_OLDEST} .. {TESTED_NEWEST}"


def cuda_major(cuda_version):
    return None if cuda_version is None else release(cuda_version)[0]


def gpu_visible():
    """Whether an NVIDIA GPU is there for this process, without initializing CUDA (that costs
    time at import and must not happen before a fork): device nodes, and CUDA_VISIBLE_DEVICES."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def describe_build(build):
    cuda = f"with CUDA kernels ({build.CUDA_ARCHS})" if build.CUDA else "CPU-only"
    torch_cuda = getattr(build, "TORCH_CUDA", None)
    flavour = f"CUDA {torch_cuda}" if torch_cuda else "CPU"
    return f"torch {build.TORCH_VERSION} ({flavour} build of torch), {cuda}"


def mismatches(build, torch_version, torch_cuda, has_gpu):
    """What can break between the build (a _build_info module or look-alike) and the running torch,
    one sentence each; empty when nothing does."""
    found = []
    if release(build.TORCH_VERSION)[:2] != release(torch_version)[:2]:
        found.append(
            f"it was compiled against torch {build.TORCH_VERSION} but torch {torch_version} is running; a C++ "
            "extension is tied to the torch minor release it was compiled against (with another it can fail "
            "to load, or misbehave)"
        )
    built_cuda = getattr(build, "TORCH_CUDA", None)
    if build.CUDA and torch_cuda is not None and cuda_major(built_cuda) != cuda_major(torch_cuda):
        found.append(
            f"its CUDA kernels were compiled for CUDA {built_cuda}, but the running torch uses CUDA {torch_cuda}"
        )
    if not build.CUDA and torch_cuda is not None and has_gpu:
        why = getattr(build, "CUDA_NOTE", None) or "not built"
        found.append(
            f"it has no CUDA kernels ({why}) but this machine has an NVIDIA GPU: CUDA tensors get "
            "validated_loss's checks, then torch's own cross-entropy. For the fused CUDA kernels, rebuild "
            "where nvcc (the CUDA toolkit) of the same CUDA major version as torch is installed"
        )
    return found


def _installed_source():
    """(how, where) validated_loss was installed from, per pip's record; None when not installed."""
    from importlib import metadata  # lazy: only the mismatch message and __main__ ask (import time)

    try:
        return source_from_direct_url(metadata.distribution(PACKAGE).read_text("direct_url.json"))
    except metadata.PackageNotFoundError:
        return None


def source_from_direct_url(text):
    """(how, where) from a direct_url.json (PEP 610) text; ("index", None) when there is none."""
    # lazy: only the mismatch message and __main__ ask (import time)
    import json
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    if not text:
        return ("index", None)
    info = json.loads(text)
    url = info.get("url", "")
    if "vcs_info" in info:
        vcs = info["vcs_info"]
        return ("vcs", f"{vcs.get('vcs', 'git')}+{url}@{vcs.get('commit_id') or vcs.get('requested_revision')}")
    # A file: URL is percent-encoded ('my%20dir'); the command wants the path as typed.
    path = url2pathname(urlparse(url).path) if url.startswith("file:") else url
    if info.get("dir_info", {}).get("editable"):
        return ("editable", path)
    return ("path", path)


def rebuild_command(package_dir=None):
    """The command that rebuilds validated_loss against the torch of this Python.

    --no-cache-dir: pip caches the wheels it builds from a git commit or an index sdist, and would
    reinstall the one built against the old torch."""
    package_dir = Path(package_dir or Path(__file__).parent)
    root = package_dir.parent
    pip = (f"{shlex.quote(sys.executable)} -m pip install --no-build-isolation --force-reinstall --no-deps "
           "--no-cache-dir")
    source = _installed_source()
    if source is not None and source[0] == "editable":
        return f"{pip} -e {shlex.quote(source[1])}"
    if (root / "setup.py").is_file() and (root / "csrc").is_dir():
        # Imported from a source tree built in place (make build): --force, because setuptools
        # skips an extension whose sources are older than the built file, whatever torch it is for.
        return f"cd {shlex.quote(str(root))} && {shlex.quote(sys.executable)} setup.py build_ext --inplace --force"
    if source is None:
        return f"{pip} <the path, git URL or sdist you installed {PACKAGE} from>"
    if source[0] == "index":
        return f"{pip} --no-binary {PACKAGE} {PACKAGE}"
    return f"{pip} {shlex.quote(source[1])}"


def mismatch_warning(build, torch_version, torch_cuda, has_gpu):
    """The text of the import-time warning, or None when the build suits the running torch."""
    found = mismatches(build, torch_version, torch_cuda, has_gpu)
    if not found:
        return None
    return ("validated_loss's compiled extension does not match the running torch: " + "; ".join(found)
            + f".\nRebuild it against this torch:\n  {rebuild_command()}")


def load_failure(build, torch_version, torch_cuda, error):
    """The ImportError message when validated_loss._C cannot be loaded."""
    if build is None:
        return (f"validated_loss._C is not built ({error}). Install with\n  {rebuild_command()}\n"
                "(or `make build` in a clone)")
    running = f"torch {torch_version} ({'CUDA ' + torch_cuda if torch_cuda else 'CPU'} build of torch)"
    return (f"validated_loss's compiled extension cannot be loaded into the running {running}; it was built "
            f"against {describe_build(build)}.\n  {error}\nRebuild it against this torch:\n  {rebuild_command()}")


class TorchMismatchWarning(UserWarning):
    """The compiled extension was built for another torch than the one running."""
