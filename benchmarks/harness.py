"""The measuring half of the benchmark: contenders, the interleaved timing loop, saved bytes, memory.

Nothing here prints or writes files; bench.py drives it and report.py turns its results into
tables and plots.
"""

import gc
import os
import platform
import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import validated_loss as vl

OURS = "validated_loss"
EAGER = "torch eager"
COMPILE = "torch.compile"
COPY = "copy ceiling"  # dst.copy_(src) of the logits' size: the machine's practical bandwidth
FRESH_COPY = "fresh copy"  # src.clone(): the same copy into a newly allocated buffer (context only)
PASSES = ("fwd", "fwd+bwd")


# ---------------------------------------------------------------------------------------------
# Machine facts


def usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def available_memory_bytes(device):
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def load_average():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def cpu_snapshot():
    """(CPU seconds the whole machine was busy, CPU seconds of this process and its children, wall)."""
    import resource

    busy = None
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle, iowait
    except (OSError, ValueError, IndexError):
        pass
    own = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))
    return busy, own, time.perf_counter()


def others_cpu_share(start, end, cores):
    """Fraction of the machine's CPU time other processes used between two snapshots: a run with
    more than a few percent is disturbed (their threads preempt ours at every parallel region)."""
    if start[0] is None or end[0] is None:
        return None
    wall = end[2] - start[2]
    others = (end[0] - start[0]) - (end[1] - start[1])
    return max(0.0, others / (wall * cores)) if wall > 0 else None


def machine_facts(device):
    from validated_loss import _build_info

    facts = {
        "cpu_model": cpu_model(),
        "cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "validated_loss": vl.__version__,
        "validated_loss_cpu_kernels": list(_build_info.CPU_CAPABILITIES),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "memory_available_gb": round((available_memory_bytes(torch.device("cpu")) or 0) / 2**30, 1),
        # Other processes on the machine skew every number; the load average says whether there were any.
        "load_average_at_start": load_average(),
        # torch's CPU allocator puts tensors of 2 MiB and more on huge pages when this is set: a
        # fresh gradient's first touch then costs far less (see benchmarks/README.md).
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE", ""),
    }
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
        facts["cuda"] = torch.version.cuda
    return facts


# ---------------------------------------------------------------------------------------------
# Contenders: name -> loss function (logits, target) -> scalar loss, mean reduction.


@dataclass
class Contender:
    name: str
    fn: object
    passes: tuple = PASSES
    clobbers_input: bool = False  # writes into the logits (Liger's CE stores its gradient there)
    # Untimed context around each call (e.g. a setting only this row uses), or None.
    around: object = None


def _optional_cuda_contenders():
    found = []
    try:
        from liger_kernel.transformers import LigerCrossEntropyLoss

        liger = LigerCrossEntropyLoss()
        found.append(Contender("liger-kernel", lambda x, y: liger(x, y), clobbers_input=True))
    except Exception:  # not installed, or no triton: simply absent
        pass
    try:
        from flash_attn.losses.cross_entropy import CrossEntropyLoss as FlashCE

        flash = FlashCE(reduction="mean")
        found.append(Contender("flash-attn", lambda x, y: flash(x, y)))
    except Exception:
        pass
    return found


def make_contenders(device, wanted=None):
    """The contenders for one shape/dtype. torch.compile gets a fresh, reset cache each time so
    every shape is compiled once, statically (dynamic=False), and never hits the recompile limit."""
    torch._dynamo.reset()
    # A wrapper, not F.cross_entropy itself: torch 2.6's torch.compile refuses a torch function.
    compiled = torch.compile(lambda x, y: F.cross_entropy(x, y), dynamic=False)
    contenders = [
        Contender(OURS, lambda x, y: vl.cross_entropy(x, y)),
        Contender(f"{OURS} [validate=off]", lambda x, y: vl.cross_entropy(x, y, validate="off")),
        Contender(f"{OURS} [check_finite]", lambda x, y: vl.cross_entropy(x, y, check_finite=True)),
        Contender(EAGER, F.cross_entropy),
        Contender(COMPILE, compiled),
    ]
    if device.type == "cpu":  # the cache is the CPU backward's; this row shows what it saves
        contenders.insert(3, Contender(f"{OURS} [no gradient cache]", lambda x, y: vl.cross_entropy(x, y),
                                       passes=("fwd+bwd",), around=vl.gradient_cache_disabled))
    if device.type == "cuda":
        contenders += _optional_cuda_contenders()
    if wanted:
        contenders = [c for c in contenders if c.name in wanted or c.name.split(" [")[0] in wanted]
    return contenders


# ---------------------------------------------------------------------------------------------
# One measured call of each kind


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_once(contender, x, y, pass_name, device):
    """Seconds for one call, inside the contender's untimed `around` context when it has one."""
    if contender.around is None:
        return _run_once(contender, x, y, pass_name, device)
    with contender.around():
        return _run_once(contender, x, y, pass_name, device)


def _run_once(contender, x, y, pass_name, device):
    """fwd: logits that need no gradient (an evaluation loss). fwd+bwd: a training step's loss: a
    fresh leaf with .grad None (zero_grad(set_to_none=True)), so the gradient's allocation and
    first touch are paid inside the timing, as in training."""
    fn = contender.fn
    if contender.clobbers_input:
        x = x.clone()  # untimed: the shared logits stay intact for the others
    if pass_name == "fwd":
        synchronize(device)
        start = time.perf_counter()
        loss = fn(x, y)
        synchronize(device)
        elapsed = time.perf_counter() - start
        del loss
        return elapsed
    leaf = x.detach().requires_grad_()
    synchronize(device)
    start = time.perf_counter()
    fn(leaf, y).backward()
    synchronize(device)
    elapsed = time.perf_counter() - start
    leaf.grad = None  # freed here, before `around` exits
    return elapsed


def copy_once(src, dst, device):
    """dst.copy_(src) into a buffer allocated (and touched) beforehand; with dst None, src.clone(),
    which also pays for a fresh allocation's first touch, as any new gradient does."""
    synchronize(device)
    start = time.perf_counter()
    out = src.clone() if dst is None else dst.copy_(src)
    synchronize(device)
    elapsed = time.perf_counter() - start
    del out
    return elapsed


def probe_autograd(contender, x, y, device):
    """Bytes autograd keeps for backward beyond the logits' storage (each storage counted once),
    and on CUDA the peak memory of a forward+backward beyond what was allocated before it.
    Untimed; for torch.compile it is also the compilation of the training graph."""
    fn = contender.fn
    if contender.clobbers_input:
        x = x.clone()
    logits_storage = x.untyped_storage().data_ptr()
    seen = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr != logits_storage:
            seen[ptr] = max(seen.get(ptr, 0), t.nbytes)
        return t

    leaf = x.detach().requires_grad_()
    peak = None
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn(leaf, y)
    loss.backward()
    if device.type == "cuda":
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
    del loss, leaf
    return sum(seen.values()), peak


def forward_peak(contender, x, y, device):
    if device.type != "cuda":
        return None
    fn = contender.fn
    if contender.clobbers_input:
        x = x.clone()
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    loss = fn(x, y)
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del loss
    return peak


# ---------------------------------------------------------------------------------------------
# One shape/dtype, all contenders interleaved


@dataclass
class Measured:
    """Raw results of one (shape, dtype): seconds per (contender, pass) plus probes."""

    times: dict = field(default_factory=dict)  # (name, pass) -> [seconds]
    saved_bytes: dict = field(default_factory=dict)  # name -> bytes kept for backward beyond logits
    peak_bytes: dict = field(default_factory=dict)  # (name, pass) -> bytes (CUDA only)
    compile_seconds: float = 0.0


def make_inputs(n, c, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=gen, dtype=torch.float32).to(dtype=dtype, device=device)
    y = torch.randint(0, c, (n,), generator=gen).to(device)
    return x, y


def measure_group(x, y, contenders, repeats, warmup, device, step=lambda what: None):
    """Times every (contender, pass) and the copy ceiling in round-robin: each round runs every
    task once, and the starting task rotates each round, so drift and cache state hit all
    contenders alike. Medians are taken over `repeats` rounds after `warmup` rounds."""
    m = Measured()
    for c in contenders:
        start = time.perf_counter()
        with torch.no_grad():
            c.fn(x.clone() if c.clobbers_input else x, y)  # compiles torch.compile's inference graph
        m.saved_bytes[c.name], m.peak_bytes[(c.name, "fwd+bwd")] = probe_autograd(c, x, y, device)
        with torch.no_grad():
            m.peak_bytes[(c.name, "fwd")] = forward_peak(c, x, y, device)
        if c.name == COMPILE:
            m.compile_seconds = time.perf_counter() - start
        step(f"ready: {c.name}")
    dst = torch.empty_like(x).copy_(x)
    tasks = [(c, p) for c in contenders for p in c.passes] + [(COPY, "copy"), (FRESH_COPY, "copy")]
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for rnd in range(warmup + repeats):
            shift = rnd % len(tasks)
            for contender, pass_name in tasks[shift:] + tasks[:shift]:
                if isinstance(contender, str):
                    key, seconds = (contender, "copy"), copy_once(x, dst if contender == COPY else None, device)
                else:
                    key = (contender.name, pass_name)
                    with torch.set_grad_enabled(pass_name != "fwd"):
                        seconds = run_once(contender, x, y, pass_name, device)
                if rnd >= warmup:
                    m.times.setdefault(key, []).append(seconds)
                step(f"{key[0]} {key[1]}")
            gc.collect()
    finally:
        if gc_was_enabled:
            gc.enable()
    del dst
    return m


def median_ms(samples):
    return statistics.median(samples) * 1e3
