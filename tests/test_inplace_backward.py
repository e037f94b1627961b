"""inplace_backward=True: the gradient written over the logits' memory (cross_entropy_bwd_).

What is checked: the gradient is the one inplace_backward=False gives (bitwise) and torch's (the
parity rule of conftest), and it really is the logits' storage; autograd's version counter makes
any other reader of the overwritten logits raise; the cases that cannot be done in place (create_graph,
torch.compile, overlapping or non-dense logits) fall back to a fresh gradient; the cases that
would silently corrupt (a leaf, a view of one) and the unsupported ones (probability targets)
raise at the forward.
"""

import pytest
import torch
import torch.nn.functional as F

from conftest import compare_cross_entropy, gen, relayout, require_vl

vl = require_vl()
pytestmark = pytest.mark.usefixtures("single_thread")

DTYPES = {"f32": torch.float32, "f64": torch.float64, "bf16": torch.bfloat16, "f16": torch.float16}
REDUCTIONS = ("none", "mean", "sum")


def make_case(shape, dtype, seed, *, ignore_index=None, layout="contig"):
    g = gen(seed)
    x = relayout((torch.randn(shape, generator=g, dtype=torch.float64) * 2).to(dtype), layout, seed)
    rows = shape[:1] + shape[2:]
    t = torch.randint(0, shape[1], rows, generator=g)
    if ignore_index is not None:
        t[torch.rand(rows, generator=g) < 0.3] = ignore_index
    w = (torch.rand(shape[1], generator=g, dtype=torch.float64) + 0.5).to(dtype)
    return x, t, w


def grad_and_storage(x, t, *, inplace, grad_output=None, **kw):
    """d loss / d logits for logits = x.clone() (a non-leaf with x's layout), and whether that
    gradient is the logits' own memory (seen by a hook on the logits)."""
    leaf = x.detach().requires_grad_()
    logits = leaf.clone()
    seen = []
    logits.register_hook(lambda g: seen.append(g.data_ptr() == logits.data_ptr()))
    loss = vl.cross_entropy(logits, t, inplace_backward=inplace, **kw)
    loss = loss[0] if isinstance(loss, tuple) else loss
    go = torch.ones_like(loss) * 1.7 if grad_output is None else grad_output
    loss.backward(go)
    return leaf.grad, seen == [True]


# --------------------------------------------------------------------------- same gradient, in place


CASES = [  # (shape, layout): every CPU kernel path (packed short rows, rows in lanes, chunked rows)
    ((37, 5), "contig"),
    ((300, 64), "contig"),
    ((33, 7), "transposed"),  # class stride N: rows in lanes
    ((9, 2100), "contig"),  # two chunks per row
    ((3, 6, 4), "contig"),  # (N, C, d)
    ((2, 6, 3, 2), "channels_last"),
]


@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{'x'.join(map(str, s))}-{lay}" for s, lay in CASES])
def test_same_gradient_as_out_of_place_and_in_the_logits_storage(dt, reduction, case):
    shape, layout = CASES[case]
    x, t, w = make_case(shape, DTYPES[dt], seed=case, ignore_index=1, layout=layout)
    kw = dict(weight=w, ignore_index=1, label_smoothing=0.1, reduction=reduction)
    go = None if reduction != "none" else torch.randn(t.shape, generator=gen(5), dtype=torch.float64).to(x.dtype)
    fresh, fresh_aliased = grad_and_storage(x, t, inplace=False, grad_output=go, **kw)
    in_place, aliased = grad_and_storage(x, t, inplace=True, grad_output=go, **kw)
    assert not fresh_aliased and aliased, "inplace_backward did not write the gradient over the logits"
    assert in_place.dtype == x.dtype and in_place.shape == x.shape
    assert torch.equal(in_place, fresh), f"in place differs: max {(in_place - fresh).abs().max()}"


@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("family", ["2d", "3d"])
def test_parity_with_torch(dt, reduction, family):
    """The in-place gradient against torch's (float64 truth rule for half types), through
    compare_cross_entropy: weights, ignore_index, label smoothing, an (N, C, d) layout."""
    shape = (6, 5) if family == "2d" else (3, 5, 4)
    x, t, w = make_case(shape, DTYPES[dt], seed=len(shape), ignore_index=2)

    def ours(logits, target, **kw):
        return vl.cross_entropy(logits.clone(), target, inplace_backward=True, **kw)

    compare_cross_entropy(x, t, w, ours=ours, ignore_index=2, label_smoothing=0.1, reduction=reduction)
    compare_cross_entropy(x, t, ours=ours, reduction=reduction)


def test_llm_options_and_returned_lse_in_place():
    """z-loss, softcap and a gradient reaching the returned lse: the same gradient in place."""
    x, t, _ = make_case((40, 70), torch.float32, seed=3, ignore_index=-100)
    grads = []
    for inplace in (False, True):
        leaf = x.detach().requires_grad_()
        loss, lse = vl.cross_entropy(leaf.clone(), t, lse_square_scale=1e-2, softcap=5.0, return_lse=True,
                                     inplace_backward=inplace)
        (loss + 0.3 * lse.sum()).backward()
        grads.append(leaf.grad)
    assert torch.equal(grads[0], grads[1])


def test_module_and_autocast():
    """CrossEntropyLoss(inplace_backward=True) on bfloat16 logits under autocast: float32 loss,
    the bfloat16 gradient written in place, equal to the out-of-place one."""
    h = torch.randn(16, 8, generator=gen(1))
    t = torch.randint(0, 50, (16,), generator=gen(2))
    lin = torch.nn.Linear(8, 50)
    results = []
    for inplace in (False, True):
        lin.zero_grad()
        seen = []
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = lin(h)
            logits.register_hook(lambda g, logits=logits: seen.append(g.data_ptr() == logits.data_ptr()))
            loss = vl.CrossEntropyLoss(label_smoothing=0.1, inplace_backward=inplace)(logits, t)
        assert loss.dtype == torch.float32 and logits.dtype == torch.bfloat16
        loss.backward()
        results.append((lin.weight.grad.clone(), seen == [True]))
    (g_fresh, aliased_fresh), (g_in_place, aliased) = results
    assert aliased and not aliased_fresh
    assert torch.equal(g_fresh, g_in_place)


def test_patched_torch_accepts_the_option():
    """Under vl.patched() torch's names are ours, so they take inplace_backward too."""
    x, t, _ = make_case((6, 5), torch.float32, seed=4)
    expected, _ = grad_and_storage(x, t, inplace=False)
    with vl.patched():
        for make_loss in (lambda logits: F.cross_entropy(logits, t, inplace_backward=True),
                          lambda logits: torch.nn.CrossEntropyLoss(inplace_backward=True)(logits, t)):
            leaf = x.detach().requires_grad_()
            logits = leaf.clone()
            (make_loss(logits) * 1.7).backward()
            torch.testing.assert_close(leaf.grad, expected, rtol=0, atol=0)
            assert torch.equal(logits.detach(), leaf.grad)  # the logits now hold the gradient


# --------------------------------------------------------------------------- misuse is an error


def test_other_node_saving_the_logits_raises():
    """logits = x.exp(): exp saved its output for its backward; the gradient written over it must
    make that backward raise torch's in-place error, never compute with the overwritten values."""
    x = torch.randn(6, 5, generator=gen(1), requires_grad=True)
    t = torch.randint(0, 5, (6,), generator=gen(2))
    loss = vl.cross_entropy(x.exp(), t, inplace_backward=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    # out of place, the same graph is fine
    vl.cross_entropy(x.exp(), t).backward()


def test_a_second_backward_through_the_graph_raises():
    x = torch.randn(6, 5, generator=gen(1), requires_grad=True)
    t = torch.randint(0, 5, (6,), generator=gen(2))
    loss = vl.cross_entropy(x * 2, t, inplace_backward=True)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("what", ["leaf", "view_of_leaf", "one_dim_leaf"])
def test_leaf_logits_are_refused_at_the_forward(what):
    leaf = torch.randn(6, 5, generator=gen(1), requires_grad=True)
    t = torch.randint(0, 5, (6,), generator=gen(2))
    logits, target = {"leaf": (leaf, t), "view_of_leaf": (leaf[:4], t[:4]), "one_dim_leaf": (leaf[0], t[0])}[what]
    with pytest.raises(vl.InplaceBackwardError, match="leaf tensor that requires grad") as info:
        vl.cross_entropy(logits, target, inplace_backward=True)
    assert isinstance(info.value, ValueError)
    assert "Fix: inplace_backward=False" in str(info.value)
    assert leaf.grad is None
    with torch.no_grad():  # no backward, nothing to refuse
        vl.cross_entropy(logits, target, inplace_backward=True)


def test_probability_targets_are_refused():
    x = torch.randn(6, 5, generator=gen(1), requires_grad=True) * 1
    q = torch.softmax(torch.randn(6, 5, generator=gen(2)), 1)
    with pytest.raises(NotImplementedError, match="inplace_backward needs class-index targets"):
        vl.cross_entropy(x, q, inplace_backward=True)


def test_the_op_refuses_overlapping_logits():
    """cross_entropy_bwd_ itself refuses logits whose elements share memory (stride 0)."""
    ops = torch.ops.validated_loss
    x = torch.randn(1, 5).expand(4, 5)
    t = torch.randint(0, 5, (4,), generator=gen(1))
    _, lse, total_weight, _ = ops.cross_entropy_fwd(x, t, None, 1, -100, 0.0)
    with pytest.raises(RuntimeError, match="non-overlapping and dense"):
        ops.cross_entropy_bwd_(x, torch.tensor(1.0), t, None, lse, total_weight, 1, -100, 0.0)


# --------------------------------------------------------------------------- fallbacks: a fresh gradient


@pytest.mark.parametrize("layout", ["expanded", "sliced", "sliced_class"])
def test_overlapping_or_non_dense_logits_get_a_fresh_gradient(layout):
    """Logits that cannot hold their gradient (stride 0) or are not dense: silently out of place."""
    base = torch.randn(6, 5, generator=gen(1), dtype=torch.float64)
    x = relayout(base, layout)
    t = torch.randint(0, 5, (6,), generator=gen(2))
    expected, _ = grad_and_storage(x.contiguous(), t, inplace=False)
    leaf = base.detach().requires_grad_()
    logits = relayout(leaf * 1, layout)  # a non-leaf with that layout
    before = logits.detach().clone()
    seen = []
    logits.register_hook(lambda g: seen.append(g.data_ptr() == logits.data_ptr()))
    (vl.cross_entropy(logits, t, inplace_backward=True) * 1.7).backward()
    assert seen == [False]
    assert torch.equal(logits.detach(), before)
    if layout != "expanded":  # (expanded: the gradients of the broadcast rows add up in leaf.grad)
        torch.testing.assert_close(leaf.grad, expected, rtol=0, atol=0)


def test_create_graph_gets_a_fresh_gradient():
    """Double backward differentiates the first-order gradient: it is never the logits' memory."""
    x = torch.randn(6, 5, generator=gen(1), dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 5, (6,), generator=gen(2))
    results = []
    for fn in (lambda z: vl.cross_entropy(z, t, label_smoothing=0.1, inplace_backward=True),
               lambda z: F.cross_entropy(z, t, label_smoothing=0.1)):
        logits = x * 2
        (g,) = torch.autograd.grad(fn(logits), logits, create_graph=True)
        assert g.data_ptr() != logits.data_ptr()
        (gg,) = torch.autograd.grad((g ** 2).sum(), x)
        results.append((g.detach(), gg, logits.detach()))
    (g_ours, gg_ours, logits_after), (g_torch, gg_torch, _) = results
    torch.testing.assert_close(g_ours, g_torch)
    torch.testing.assert_close(gg_ours, gg_torch)
    torch.testing.assert_close(logits_after, x.detach() * 2, rtol=0, atol=0)


def test_func_grad_ignores_the_option():
    """torch.func.grad takes torch's composite (no autograd of ours, nothing written in place):
    the option changes nothing there, not even for the transform's own leaf inputs."""
    x = torch.randn(6, 5, generator=gen(1), dtype=torch.float64)
    t = torch.randint(0, 5, (6,), generator=gen(2))
    expected = torch.func.grad(lambda a: F.cross_entropy(a, t, label_smoothing=0.1))(x)
    got = torch.func.grad(lambda a: vl.cross_entropy(a, t, label_smoothing=0.1, inplace_backward=True))(x)
    torch.testing.assert_close(got, expected)


def test_compile_ignores_the_option():
    """torch.compile traces the normal backward (cross_entropy_bwd, never cross_entropy_bwd_), and
    its gradient is torch's."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func

    graphs = []

    def keep(gm, example_inputs):
        graphs.append({str(n.target) for n in gm.graph.nodes if n.op == "call_function"})
        return make_boxed_func(gm)

    torch._dynamo.reset()
    lin = torch.nn.Linear(8, 5, dtype=torch.float64)
    h = torch.randn(6, 8, generator=gen(1), dtype=torch.float64)
    t = torch.randint(0, 5, (6,), generator=gen(2))

    def f(h, t):
        return vl.cross_entropy(lin(h), t, inplace_backward=True)

    compiled = torch.compile(f, backend=aot_autograd(fw_compiler=keep, bw_compiler=keep), fullgraph=True)
    compiled(h, t).backward()
    torch._dynamo.reset()
    targets = set().union(*graphs)
    assert "validated_loss.cross_entropy_bwd.default" in targets, targets
    assert not any("cross_entropy_bwd_" in name for name in targets), targets
    g_compiled = lin.weight.grad.clone()
    lin.zero_grad()
    F.cross_entropy(lin(h), t).backward()
    torch.testing.assert_close(g_compiled, lin.weight.grad)


def test_fwd_grad_refuses_overlapping_logits():
    """cross_entropy_fwd_grad writes the gradient over its logits: rows sharing memory (expand)
    would race (one row's gradient overwriting another's logits), so the op refuses them, as
    cross_entropy_bwd_ does."""
    row = torch.randn(1, 7)
    logits = row.expand(5, 7)
    target = torch.tensor([0, 1, 2, 3, 4])
    with pytest.raises(RuntimeError, match="cross_entropy_fwd_grad writes the gradient over the logits"):
        torch.ops.validated_loss.cross_entropy_fwd_grad(logits, target, None, 2, -100, 0.0, 0.0, 0.0, None, None)
    loss = torch.ops.validated_loss.cross_entropy_fwd_grad(logits.clone(), target, None, 2, -100, 0.0, 0.0, 0.0,
                                                           None, None)[0]
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
