"""The grid the CUDA kernels are checked on, shared by tests/test_cuda.py (a real GPU) and
tests/test_cuda_emu.py (the same kernels executed on the CPU by the emulated build): shapes with
row lengths around every vector and team boundary, dtypes, memory layouts, options, reductions,
and the comparison with torch (low precision: at least as close to the float64 truth as torch)."""

import torch
import torch.nn.functional as F

from conftest import assert_close_to_torch, seed_of, vl

DTYPES = {"f32": torch.float32, "f64": torch.float64, "bf16": torch.bfloat16, "f16": torch.float16}
LOW = (torch.bfloat16, torch.float16)
REDUCTIONS = ("none", "mean", "sum")

# name -> (N, C, extra spatial dims): team-per-row (small C), warp-per-row (C ~ 1k), block-per-row
# (large vocabularies, odd lengths; a few rows: split across blocks), (N, C, H, W), and a (B, V, T)
# head whose contiguous layout is a strided class dim over adjacent rows (tiles of 32 rows, the
# last one partial, each row's classes split across blocks).
SHAPES = {
    "tiny": (13, 5, ()),
    "c1": (7, 1, ()),
    "c2": (9, 2, ()),
    "c3": (11, 3, ()),
    "c7": (6, 7, ()),
    "c8": (6, 8, ()),
    "c9": (6, 9, ()),
    "c31": (5, 31, ()),
    "c32": (5, 32, ()),
    "c33": (5, 33, ()),
    "c1024": (4, 1024, ()),
    "c1025": (4, 1025, ()),
    "c4095": (3, 4095, ()),
    "c4096": (3, 4096, ()),
    "c4097": (3, 4097, ()),
    "c1000": (37, 1000, ()),
    "c1023": (9, 1023, ()),
    "c2049": (5, 2049, ()),
    "c32771": (4, 32771, ()),
    "c50257": (3, 50257, ()),
    "nchw": (2, 7, (5, 3)),
    "bvt": (3, 700, (45,)),
}


def seeded(seed):
    return torch.Generator(device="cpu").manual_seed(seed)


def layout(v, kind):
    """v with another memory layout on the same device (same values)."""
    if kind == "contig":
        return v.contiguous()
    if kind == "transposed":  # class dim not innermost: (C, N).t() or classes last in memory
        return v.movedim(1, -1).contiguous().movedim(-1, 1) if v.dim() > 2 else v.t().contiguous().t()
    if kind.startswith("offset"):  # storage offset: every row start at another 16-byte phase
        k = int(kind[6:])
        buf = torch.full((v.numel() + k,), float("nan"), dtype=v.dtype, device=v.device)
        out = buf[k:].view(v.shape)
        out.copy_(v)
        return out
    if kind == "sliced_class":  # x[:, ::2]
        shape = list(v.shape)
        shape[1] *= 2
        big = torch.full(shape, float("nan"), dtype=v.dtype, device=v.device)
        out = big[:, ::2]
        out.copy_(v)
        return out
    if kind == "channels_last":
        return v.contiguous(memory_format=torch.channels_last)
    raise ValueError(kind)


def layouts_for(shape_name, dim):
    if shape_name in ("c32771", "c50257"):
        return ("contig", "offset1", "offset3")
    if dim == 4:
        return ("contig", "transposed", "channels_last", "sliced_class")
    return ("contig", "offset1", "transposed", "sliced_class")


def make_inputs(shape_name, dtype, lay, *, weighted, ignore, seed, device):
    n, c, extra = SHAPES[shape_name]
    g = seeded(seed)
    x = (torch.randn((n, c, *extra), generator=g, dtype=torch.float64) * 3).to(dtype).to(device)
    t = torch.randint(0, c, (n, *extra), generator=g)
    if ignore:
        t[torch.rand(t.shape, generator=g) < 0.3] = -100
    w = (torch.rand(c, generator=g, dtype=torch.float64) * 2 + 0.1).to(dtype).to(device) if weighted else None
    return layout(x, lay), t.to(device), w


def loss_and_grads(fn, x, target, weight, kwargs, grad_output, wrt_target=False):
    x = x.detach().requires_grad_()
    tgt = target.detach().requires_grad_(wrt_target) if target.is_floating_point() else target
    loss = fn(x, tgt, weight=weight, **kwargs)
    wrt = [x] + ([tgt] if wrt_target else [])
    grads = torch.autograd.grad(loss, wrt, grad_output.to(loss.dtype))
    return loss.detach(), [g.detach() for g in grads]


def grad_output_for(loss_shape, seed, device):
    if len(loss_shape) == 0:
        return torch.tensor(3.7, dtype=torch.float64, device=device)
    return (torch.randn(loss_shape, generator=seeded(seed), dtype=torch.float64) * 2 + 0.5).to(device)


def compare(x, target, weight, kwargs, seed, wrt_target=False):
    """ours vs torch on the same tensors. Low precision: at least as close to torch's float64 truth
    as torch is. float32: within float32 tolerance of torch, or else at least as close to the
    float64 truth as torch (torch's own float32 can be the one that is off: at C ~ 32k with label
    smoothing its gradient is ~50x further from the truth than the kernels')."""
    ref_loss = F.cross_entropy(x, target, weight, **kwargs)
    go = grad_output_for(ref_loss.shape, seed, x.device)
    t_loss, t_grads = loss_and_grads(F.cross_entropy, x, target, weight, kwargs, go, wrt_target)
    o_loss, o_grads = loss_and_grads(vl.cross_entropy, x, target, weight, kwargs, go, wrt_target)
    precision = x.dtype

    def truth():
        def up(t):
            return None if t is None else (t.double() if t.is_floating_point() else t)

        return loss_and_grads(F.cross_entropy, up(x), up(target), up(weight), kwargs, go, wrt_target)

    truth_loss, truth_grads = truth() if precision in LOW else (None, [None] * len(t_grads))
    pairs = [(o_loss, t_loss, truth_loss, "loss")]
    pairs += [(o_grads[i], t_grads[i], truth_grads[i], f"grad wrt {name}")
              for i, name in enumerate(["input", "target"][: len(t_grads)])]
    for k, (ours, theirs, true, what) in enumerate(pairs):
        try:
            assert_close_to_torch(ours, theirs, true, precision=precision, what=what)
        except AssertionError:
            if precision != torch.float32:
                raise
            truth_loss, truth_grads = truth()
            true = ([truth_loss] + list(truth_grads))[k]
            assert_close_to_torch(ours, theirs, true, precision=precision, what=what, against_truth=True)
    return o_loss, o_grads


OPTIONS = {
    "plain": dict(weighted=False, ignore=False, kwargs={}),
    "weight": dict(weighted=True, ignore=False, kwargs={}),
    "ignore": dict(weighted=False, ignore=True, kwargs={"ignore_index": -100}),
    "all": dict(weighted=True, ignore=True, kwargs={"ignore_index": -100, "label_smoothing": 0.1}),
    "smooth": dict(weighted=False, ignore=False, kwargs={"label_smoothing": 0.25}),
}

GRID = [(s, d, lay, o, r) for s in SHAPES for d in DTYPES for lay in layouts_for(s, 2 + len(SHAPES[s][2]))
        for o in OPTIONS for r in REDUCTIONS]


def compare_probabilities(shape, dtype, option, reduction, device):
    """Probability targets on `shape` (name in SHAPES), dtype name, option 'plain' or
    'weight_smooth': ours against torch, with the gradient wrt the targets too."""
    seed = seed_of(shape, dtype, option, reduction) & 0xFFFF
    n, c, extra = SHAPES[shape]
    g = seeded(seed)
    x = (torch.randn((n, c, *extra), generator=g, dtype=torch.float64) * 3).to(DTYPES[dtype]).to(device)
    q = torch.softmax(torch.randn((n, c, *extra), generator=g, dtype=torch.float64), dim=1)
    q = layout(q.to(DTYPES[dtype]).to(device), "transposed" if extra else "offset1")
    w = None
    if option != "plain":
        w = (torch.rand(c, generator=g, dtype=torch.float64) + 0.5).to(DTYPES[dtype]).to(device)
    kwargs = {"reduction": reduction, "label_smoothing": 0.2 if option != "plain" else 0.0}
    compare(x, q, w, kwargs, seed, wrt_target=True)
