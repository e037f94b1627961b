"""Validation inside torch.compile graphs, on the CPU: the Python code around the op runs once, at
trace time, so what a bad value raises must come from the op itself (csrc/python_errors.h), and
what the op is asked to do must be decided at trace time (functional.py)."""

import pytest
import torch

import validated_loss as vl

FORWARD = (torch.ops.validated_loss.cross_entropy_fwd, torch.ops.validated_loss.cross_entropy_fwd.default)


@pytest.fixture(autouse=True)
def fresh_compile_cache():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def raised(fn, *args):
    with pytest.raises(Exception) as info:
        fn(*args)
    return info.value


def text(error):
    """The error's message without the "While executing %node" paragraph that torch.fx's
    interpreter (aot_eager) appends to it on torch 2.6 (later torch keeps it out of str())."""
    return str(error).split("\n\nWhile executing %")[0]


@pytest.mark.parametrize("backend", ["eager", "aot_eager", "inductor"])
def test_a_bad_target_raises_the_same_error_as_eager(backend):
    x, t = torch.randn(2, 5, 3), torch.randint(0, 5, (2, 3))
    t[1, 2], t[0, 1] = 9, -4
    compiled = torch.compile(lambda x, t: vl.cross_entropy(x, t, ignore_index=-1), backend=backend, fullgraph=True)
    eager, inside = raised(vl.cross_entropy, x, t, None, None, -1), raised(compiled, x, t)
    assert type(inside) is vl.TargetOutOfRangeError and isinstance(inside, IndexError)
    assert text(inside) == str(eager)
    assert (inside.position, inside.value, inside.count, inside.num_classes, inside.ignore_index) == \
        ((0, 1), -4, 2, 5, -1)


def test_a_non_finite_logit_raises_the_same_error_as_eager():
    x, t = torch.randn(4, 6), torch.tensor([0, 1, 2, 3])
    x[2, 5] = float("inf")
    compiled = torch.compile(lambda x, t: vl.cross_entropy(x, t, check_finite=True), backend="aot_eager",
                             fullgraph=True)
    inside = raised(compiled, x, t)
    assert type(inside) is vl.NonFiniteLogitsError and isinstance(inside, ValueError)
    assert text(inside) == str(raised(lambda: vl.cross_entropy(x, t, check_finite=True)))
    assert (inside.row, inside.column) == (2, 5)


def test_the_module_raises_it_inside_a_compiled_model():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    loss_fn = vl.CrossEntropyLoss()
    step = torch.compile(lambda x, t: loss_fn(model(x), t), backend="aot_eager", fullgraph=True)
    x = torch.randn(5, 4)
    assert torch.isfinite(step(x, torch.tensor([0, 1, 2, 0, 1])))
    error = raised(step, x, torch.tensor([0, 1, 3, 0, 1]))
    assert type(error) is vl.TargetOutOfRangeError and error.position == (2,) and error.value == 3


def validate_codes_traced(validate):
    """The validate argument the op gets in the traced graph (dynamo's FX graph)."""
    codes = []

    def backend(gm, example_inputs):
        codes.extend(node.args[7] for node in gm.graph.nodes if node.target in FORWARD)
        return gm

    compiled = torch.compile(lambda x, t: vl.cross_entropy(x, t, validate=validate), backend=backend, fullgraph=True)
    compiled(torch.randn(3, 4), torch.tensor([0, 1, 2]))
    return codes


def test_sync_is_traced_as_deferred():
    """Inside a compiled graph the op must not wait for the device: 'sync' is passed as 'deferred'
    (2), which the CUDA op queues and checks at the next call; the CPU op raises at once either way."""
    assert validate_codes_traced("sync") == [2]
    assert validate_codes_traced("deferred") == [2]
    assert validate_codes_traced("off") == [0]
