"""Small calls (issue 16): the common case goes straight to the op, and only where checks.check_inputs
could not have raised; the forward op's C++ autograd gives torch's gradient and no node without grad."""

import pytest
import torch
import torch.nn.functional as F

from conftest import gen, require_vl

vl = require_vl()
from validated_loss import checks, functional  # noqa: E402


@pytest.fixture
def checked(monkeypatch):
    """The calls that ran checks.check_inputs (the general path)."""
    calls = []
    real = checks.check_inputs

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(checks, "check_inputs", spy)
    return calls


def test_the_common_case_skips_the_general_path(checked):
    x, y = torch.randn(8, 10, generator=gen(1)), torch.randint(0, 10, (8,), generator=gen(2))
    torch.testing.assert_close(vl.cross_entropy(x, y), F.cross_entropy(x, y))
    torch.testing.assert_close(vl.cross_entropy(x, y, ignore_index=3), F.cross_entropy(x, y, ignore_index=3))
    assert checked == []


def test_a_bool_ignore_index_is_refused_as_torch_refuses_it():
    with pytest.raises(TypeError, match="'ignore_index' .* must be int, not bool"):
        vl.cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]), ignore_index=True)


@pytest.mark.parametrize("case", ["smoothing", "weight", "sum", "3d", "int32 target", "int smoothing", "autocast",
                                  "vmap", "meta", "1d"])
def test_anything_else_takes_the_general_path(checked, case):
    x, y = torch.randn(4, 5, generator=gen(3)), torch.tensor([0, 1, 2, 3])
    kwargs, call = {}, vl.cross_entropy
    if case == "smoothing":
        kwargs = {"label_smoothing": 0.1}
    elif case == "weight":
        kwargs = {"weight": torch.ones(5)}
    elif case == "sum":
        kwargs = {"reduction": "sum"}
    elif case == "3d":
        x, y = torch.randn(4, 5, 2), torch.zeros(4, 2, dtype=torch.long)
    elif case == "int32 target":
        y = y.int()
    elif case == "int smoothing":
        kwargs = {"label_smoothing": 0}
    elif case == "meta":
        x, y = x.to("meta"), y.to("meta")
    elif case == "1d":
        x, y = x[0], y[0]
    try:
        if case == "autocast":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                call(x, y)
        elif case == "vmap":
            torch.func.vmap(call)(x.unsqueeze(0), y.unsqueeze(0))
        else:
            call(x, y, **kwargs)
    except (TypeError, RuntimeError):
        pass  # the general path's errors (int32 targets): raised after the checks ran
    assert checked, f"{case}: took the common case"


def test_no_grad_calls_record_no_node_and_grad_calls_give_torchs_gradient():
    x, y = torch.randn(6, 7, generator=gen(4)), torch.randint(0, 7, (6,), generator=gen(5))
    assert vl.cross_entropy(x.requires_grad_(), y).grad_fn is not None
    with torch.no_grad():
        assert vl.cross_entropy(x, y).grad_fn is None
    ours, theirs = x.detach().requires_grad_(), x.detach().requires_grad_()
    vl.cross_entropy(ours, y).backward()
    F.cross_entropy(theirs, y).backward()
    torch.testing.assert_close(ours.grad, theirs.grad)


def test_common_case_is_decided_in_one_place():
    x, y = torch.randn(3, 4), torch.tensor([0, 1, 2])
    assert functional._common_case(x, y)
    assert not functional._common_case(x, y.int())
    assert not functional._common_case(x.unsqueeze(-1), y.unsqueeze(-1))


def test_the_python_autograd_fallback_still_works():
    """With a torch of another minor release than the build's, cross_entropy_fwd's autograd is the
    Python one (_autograd.cpp_forward_autograd); VALIDATED_LOSS_PYTHON_AUTOGRAD=1 forces it here."""
    import os
    import pathlib
    import subprocess
    import sys

    code = """
import torch, torch.nn.functional as F
import validated_loss as vl
from validated_loss import _autograd
assert not _autograd.CPP_FORWARD_AUTOGRAD
x = torch.randn(5, 4, dtype=torch.float64)
y = torch.tensor([0, 1, 2, 3, 0])
ours, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
vl.cross_entropy(ours, y, label_smoothing=0.1).backward()
F.cross_entropy(ref, y, label_smoothing=0.1).backward()
torch.testing.assert_close(ours.grad, ref.grad)
assert torch.autograd.gradgradcheck(lambda t: vl.cross_entropy(t, y), (x.clone().requires_grad_(),))
scaled = x.clone().requires_grad_() * 1.0
loss = vl.cross_entropy(scaled, y)
scaled.div_(2.0)
try:
    loss.backward()
    raise SystemExit("no error")
except vl.LogitsModifiedError:
    pass
logits = x.clone().requires_grad_() * 1.0
vl.cross_entropy(logits, y, inplace_backward=True).backward()
print("ok")
"""
    root = pathlib.Path(__file__).resolve().parent.parent
    env = dict(os.environ, VALIDATED_LOSS_PYTHON_AUTOGRAD="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
