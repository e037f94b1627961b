"""`python -m validated_loss`: what this build contains and which path each device's calls take."""

import torch

import validated_loss
from validated_loss import _build_info, _ops, _torch_support


def device_paths():
    """(device, path) for the CPU and every visible accelerator."""
    cpu = torch.backends.cpu.get_cpu_capability()
    kernel_width = cpu if cpu.upper() in _build_info.CPU_CAPABILITIES else "DEFAULT"
    paths = [("cpu", f"validated_loss CPU kernels ({kernel_width} build; torch reports {cpu})")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            name = torch.cuda.get_device_name(i)
            major, minor = torch.cuda.get_device_capability(i)
            if _ops.has_kernel("cuda"):
                paths.append((f"cuda:{i}", f"validated_loss CUDA kernels on {name} (sm_{major}{minor})"))
            else:
                paths.append((f"cuda:{i}", f"{name}: no CUDA kernels in this build; torch computes after our checks"))
    for other in ("mps", "xpu"):
        backend = getattr(torch.backends, other, None) or getattr(torch, other, None)
        if backend is not None and getattr(backend, "is_available", lambda: False)():
            paths.append((other, "no kernels of ours: validated_loss checks, then torch's cross_entropy computes"))
    return paths


def main():
    print(f"validated_loss {validated_loss.__version__}")
    flavour = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU"
    print(f"torch {torch.__version__} running ({flavour} build of torch), "
          f"{_torch_support.range_text(torch.__version__)}")
    print(f"built against torch {_build_info.TORCH_VERSION}"
          f" ({'CUDA ' + _build_info.TORCH_CUDA if _build_info.TORCH_CUDA else 'CPU'} build of torch)")
    problems = _torch_support.mismatches(_build_info, torch.__version__, torch.version.cuda,
                                         _torch_support.gpu_visible())
    for problem in problems:
        print(f"  mismatch: {problem}")
    if problems:
        print(f"  rebuild: {_torch_support.rebuild_command()}")
    print(f"CPU kernels compiled for: {', '.join(_build_info.CPU_CAPABILITIES)}")
    if _build_info.CUDA:
        print(f"CUDA kernels compiled for architectures: {_build_info.CUDA_ARCHS}")
    else:
        print(f"CUDA kernels: not built ({_build_info.CUDA_NOTE})")
    if _build_info.SANITIZE:
        print(f"sanitizer: {_build_info.SANITIZE}")
    print("Where a call goes:")
    for device, path in device_paths():
        print(f"  {device:8s} {path}")


if __name__ == "__main__":
    main()
