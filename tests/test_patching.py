"""validated_loss.patch() / unpatch() / patched(): torch's cross-entropy routed to ours, and back."""

import pickle

import pytest
import torch
import torch.nn.functional as F

import validated_loss as vl
from validated_loss import patching

ORIGINAL_CLASS = torch.nn.CrossEntropyLoss
ORIGINAL_FUNCTION = torch.nn.functional.cross_entropy
# Every place patch() touches, with torch's object.
PLACES = [(torch.nn, "CrossEntropyLoss", ORIGINAL_CLASS),
          (torch.nn.modules, "CrossEntropyLoss", ORIGINAL_CLASS),
          (torch.nn.modules.loss, "CrossEntropyLoss", ORIGINAL_CLASS),
          (torch.nn.functional, "cross_entropy", ORIGINAL_FUNCTION)]


def restored():
    return all(getattr(space, name) is original for space, name, original in PLACES)


@pytest.fixture(autouse=True)
def _always_restore():
    # The parity tests use torch.nn.functional.cross_entropy as their reference: never leave it patched.
    assert restored() and not patching.is_patched()
    yield
    patching.unpatch()
    for space, name, original in PLACES:
        setattr(space, name, original)


def library_train_step(model, x, y):
    """Stands for code the user cannot edit: builds torch's loss module internally."""
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    loss = criterion(model(x), y)
    loss.backward()
    return criterion, loss


def test_seed_example_try_except_runtime_error_catches_batch_mismatch():
    criterion = vl.CrossEntropyLoss()
    logits, target = torch.randn(32, 10), torch.randint(0, 10, (64,))
    try:
        criterion(logits, target)
    except RuntimeError as e:
        caught = e
    else:
        pytest.fail("a 32 vs 64 batch mismatch was not raised")
    assert isinstance(caught, vl.BatchSizeMismatchError)
    assert isinstance(caught, ValueError)  # what torch raises, for `except ValueError` code
    message = str(caught)
    assert "32" in message and "64" in message
    assert "DataLoader" in message and "drop_last" in message


def test_seed_example_under_patch_torch_module_raises_ours():
    with patching.patched():
        criterion = torch.nn.CrossEntropyLoss()
        try:
            criterion(torch.randn(32, 10), torch.randint(0, 10, (64,)))
        except RuntimeError as e:
            caught = e
        else:
            pytest.fail("no error")
    assert isinstance(caught, vl.BatchSizeMismatchError)
    assert "Expected input batch_size (32) to match target batch_size (64)" in str(caught)
    assert "DataLoader" in str(caught)


def test_library_code_gets_our_class_and_torch_values():
    torch.manual_seed(1)
    model = torch.nn.Linear(6, 5)
    x, y = torch.randn(12, 6), torch.randint(0, 5, (12,))

    criterion_torch, loss_torch = library_train_step(model, x, y)
    grad_torch = model.weight.grad.clone()
    model.zero_grad()
    with patching.patched():
        criterion, loss = library_train_step(model, x, y)
    grad = model.weight.grad.clone()

    assert type(criterion_torch) is ORIGINAL_CLASS
    assert isinstance(criterion, vl.CrossEntropyLoss)
    assert isinstance(criterion, ORIGINAL_CLASS)
    torch.testing.assert_close(loss, loss_torch)
    torch.testing.assert_close(grad, grad_torch)
    assert torch.nn.CrossEntropyLoss is ORIGINAL_CLASS
    assert restored()


def test_all_places_replaced_then_restored_by_identity():
    with patching.patched():
        assert patching.is_patched()
        for space, name, original in PLACES:
            assert getattr(space, name) is not original, f"{space.__name__}.{name} not patched"
        # CrossEntropyLoss.forward looks cross_entropy up on torch.nn.modules.loss.F.
        assert torch.nn.modules.loss.F.cross_entropy is torch.nn.functional.cross_entropy
        assert issubclass(torch.nn.CrossEntropyLoss, vl.CrossEntropyLoss)
    assert restored()
    assert not patching.is_patched()


def test_functional_looked_up_at_call_time_reaches_ours():
    with patching.patched():
        with pytest.raises(vl.TargetOutOfRangeError, match=r"target\[2\] = 7"):
            F.cross_entropy(torch.randn(4, 5), torch.tensor([0, 1, 7, 2]))
    with pytest.raises(IndexError) as info:  # torch again
        F.cross_entropy(torch.randn(4, 5), torch.tensor([0, 1, 7, 2]))
    assert not isinstance(info.value, vl.ValidatedLossError)


def test_torch_module_created_before_patching_computes_with_ours():
    before = torch.nn.CrossEntropyLoss()
    with patching.patched():
        assert isinstance(before, torch.nn.CrossEntropyLoss)  # library isinstance checks still pass
        assert issubclass(ORIGINAL_CLASS, torch.nn.CrossEntropyLoss)
        with pytest.raises(vl.TargetOutOfRangeError):
            before(torch.randn(3, 4), torch.tensor([0, 4, 1]))
    with pytest.raises(IndexError) as info:
        before(torch.randn(3, 4), torch.tensor([0, 4, 1]))
    assert not isinstance(info.value, vl.ValidatedLossError)


def test_subclass_defined_while_patched_does_not_claim_torch_instances():
    with patching.patched():
        class MyLoss(torch.nn.CrossEntropyLoss):
            pass
    assert issubclass(MyLoss, vl.CrossEntropyLoss)
    assert not isinstance(ORIGINAL_CLASS(), MyLoss)
    assert isinstance(MyLoss(), ORIGINAL_CLASS)


def test_patch_is_idempotent_and_unpatch_once_restores():
    patching.patch()
    first = torch.nn.CrossEntropyLoss, torch.nn.functional.cross_entropy
    patching.patch()
    assert (torch.nn.CrossEntropyLoss, torch.nn.functional.cross_entropy) == first
    patching.unpatch()
    assert restored()
    patching.unpatch()  # not patched: nothing to do
    assert restored()


def test_nested_patched_keeps_the_outer_patch():
    with patching.patched():
        with patching.patched():
            assert patching.is_patched()
        assert patching.is_patched()
        assert torch.nn.CrossEntropyLoss is not ORIGINAL_CLASS
    assert restored()


def test_patched_inside_patch_leaves_it_patched():
    patching.patch()
    with patching.patched():
        pass
    assert patching.is_patched()
    patching.unpatch()
    assert restored()


def test_restored_when_the_block_raises():
    with pytest.raises(KeyError):
        with patching.patched():
            raise KeyError("boom")
    assert restored()


def test_our_module_works_while_patched():
    x, y = torch.randn(7, 4, requires_grad=True), torch.randint(0, 4, (7,))
    with patching.patched():
        loss = vl.CrossEntropyLoss(label_smoothing=0.2)(x, y)
        functional = vl.cross_entropy(x, y, label_smoothing=0.2)
        patched_function = torch.nn.functional.cross_entropy(x, y, label_smoothing=0.2)
    expected = ORIGINAL_FUNCTION(x, y, label_smoothing=0.2)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(functional, expected)
    torch.testing.assert_close(patched_function, expected)


def test_fallback_to_torch_does_not_recurse_while_patched():
    # meta tensors have no kernel of ours: functional falls back to torch's F.cross_entropy,
    # which must be torch's and not the patched one (that would recurse forever).
    x = torch.randn(4, 5, device="meta")
    with patching.patched():
        loss = torch.nn.functional.cross_entropy(x, torch.randn(4, 5, device="meta"))
    assert loss.device.type == "meta" and loss.shape == ()


def _raise_if_called(*args, **kwargs):
    raise AssertionError("validated_loss looked torch.nn.functional.cross_entropy up at call time; "
                         "under patch() that is validated_loss's own function (infinite recursion)")


def _probe_torch_function_captured(run):
    """Run `run` while torch.nn.functional.cross_entropy raises: validated_loss's internal uses of
    torch's composite (second order, weight gradient) must hold torch's function itself."""
    with patching.patched():
        patched_function = torch.nn.functional.cross_entropy
        torch.nn.functional.cross_entropy = _raise_if_called
        try:
            run()
        finally:
            torch.nn.functional.cross_entropy = patched_function


def test_double_backward_while_patched():
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 5, (4,))

    def run():
        assert torch.autograd.gradgradcheck(lambda v: vl.cross_entropy(v, t), (x,))

    _probe_torch_function_captured(run)  # fails (instead of hanging) without the fix
    with patching.patched():
        assert torch.autograd.gradgradcheck(lambda v: torch.nn.functional.cross_entropy(v, t), (x,))


def test_probability_weight_gradient_while_patched():
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    q = torch.softmax(torch.randn(4, 5, dtype=torch.float64), 1)
    w = torch.rand(5, dtype=torch.float64, requires_grad=True)
    expected = torch.autograd.grad(ORIGINAL_FUNCTION(x, q, w), w)[0]

    def run():
        (grad,) = torch.autograd.grad(vl.cross_entropy(x, q, w), w)
        torch.testing.assert_close(grad, expected)

    _probe_torch_function_captured(run)
    with patching.patched():
        (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(x, q, w), w)
    torch.testing.assert_close(grad, expected)


def test_module_made_while_patched_pickles_and_reprs_like_torch():
    with patching.patched():
        module = torch.nn.CrossEntropyLoss(ignore_index=3)
    assert repr(module) == repr(ORIGINAL_CLASS(ignore_index=3)) == "CrossEntropyLoss()"
    copy = pickle.loads(pickle.dumps(module))  # loaded after the patch: torch's class (issue 15, item 8)
    assert type(copy) is ORIGINAL_CLASS and copy.ignore_index == 3
    x, y = torch.randn(3, 4), torch.tensor([0, 3, 1])
    torch.testing.assert_close(copy(x, y), ORIGINAL_FUNCTION(x, y, ignore_index=3))
    with patching.patched():
        again = pickle.loads(pickle.dumps(module))
    assert isinstance(again, vl.CrossEntropyLoss) and again.ignore_index == 3


# ---- issue 15, item 8: pickles across the patch


def test_criterion_pickled_while_patched_loads_without_the_package(tmp_path):
    import subprocess
    import sys

    with patching.patched():
        model = torch.nn.Sequential(torch.nn.Linear(4, 3))
        model.criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
        path = tmp_path / "model.pt"
        torch.save(model, path)
    assert b"validated_loss" not in path.read_bytes()
    assert "__reduce_ex__" not in vars(ORIGINAL_CLASS)  # unpatch() took back what patch() gave torch's class
    code = ("import sys, torch; m = torch.load(sys.argv[1], weights_only=False); "
            "assert type(m.criterion) is torch.nn.CrossEntropyLoss, type(m.criterion); "
            "m.criterion(torch.randn(2, 3), torch.tensor([0, 2])); "
            "assert 'validated_loss' not in sys.modules")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, cwd=tmp_path)


def test_torch_criterion_unpickled_while_patched_runs_as_ours():
    blob = pickle.dumps(ORIGINAL_CLASS(label_smoothing=0.2, ignore_index=1))  # made and pickled by torch
    x, y = torch.randn(3, 4), torch.tensor([0, 1, 2])
    with patching.patched():
        module = pickle.loads(blob)
        assert isinstance(module, vl.CrossEntropyLoss)
        torch.testing.assert_close(module(x, y), ORIGINAL_FUNCTION(x, y, label_smoothing=0.2, ignore_index=1))


# ---- issue 15, item 7: TorchScript while patched (scripted code computes with torch's op)


class _ScriptedModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(4, 3)
        self.criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

    def forward(self, x, y):
        logits = self.head(x)
        return self.criterion(logits, y) + F.cross_entropy(logits, y, reduction="sum", ignore_index=2)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("built", ["before", "while"])
def test_jit_script_while_patched(built):
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 1, 0])
    model = _ScriptedModel() if built == "before" else None
    with patching.patched():
        model = model or _ScriptedModel()
        expected = model(x, y)
        scripted = torch.jit.script(model)
        torch.testing.assert_close(scripted(x, y), expected)
        pickle.dumps(model.criterion)  # the module scripting swapped in still pickles
    torch.testing.assert_close(scripted(x, y), expected)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_jit_script_of_a_function_while_patched():
    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(x, y, label_smoothing=0.1)

    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 1, 0])
    with patching.patched():
        torch.testing.assert_close(torch.jit.script(loss)(x, y), ORIGINAL_FUNCTION(x, y, label_smoothing=0.1))


def test_unpatch_leaves_a_later_replacement_in_place_with_a_warning():
    def theirs(*args, **kwargs):
        return ORIGINAL_FUNCTION(*args, **kwargs)

    patching.patch()
    torch.nn.functional.cross_entropy = theirs
    with pytest.warns(RuntimeWarning, match="cross_entropy was replaced"):
        patching.unpatch()
    assert torch.nn.functional.cross_entropy is theirs
    assert torch.nn.CrossEntropyLoss is ORIGINAL_CLASS
    torch.nn.functional.cross_entropy = ORIGINAL_FUNCTION


def test_exported_from_the_package():
    assert vl.patch is patching.patch
    assert vl.unpatch is patching.unpatch
    assert vl.patched is patching.patched
    assert vl.data.check_loader is not None
