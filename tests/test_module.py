"""validated_loss.CrossEntropyLoss against torch.nn.CrossEntropyLoss: construction, buffers,
state_dict, repr, .to(), legacy arguments, and forward parity."""

import copy
import inspect
import io
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F

from conftest import compare_cross_entropy, require_vl
from test_parity import FAMILIES, assert_signature_extends, make_index_target, make_logits, make_prob_target

vl = require_vl()
pytestmark = pytest.mark.usefixtures("single_thread")

C = 5
W = torch.tensor([0.5, 1.0, 2.0, 0.25, 1.5])


def pair(*args, **kwargs):
    """(ours, torch's) modules built with the same arguments, with the warnings each emitted."""
    out = []
    for cls in (vl.CrossEntropyLoss, torch.nn.CrossEntropyLoss):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            m = cls(*args, **kwargs)
        out.append((m, [(w.category, str(w.message)) for w in caught]))
    return out


def calls(ours, theirs):
    """compare_cross_entropy's `ours`/`reference` for two modules. The float64 truth run of a
    low-precision case needs torch's module with its weight in float64 (same values)."""
    def reference(x, t):
        m = theirs
        if x.dtype == torch.float64 and m.weight is not None and m.weight.dtype != torch.float64:
            m = copy.deepcopy(m).double()
        return m(x, t)
    return dict(ours=lambda x, t: ours(x, t), reference=reference)


def test_constructor_signature():
    assert_signature_extends(vl.CrossEntropyLoss.__init__, torch.nn.CrossEntropyLoss.__init__)


def test_forward_signature():
    ours = [(p.name, p.kind, p.default) for p in inspect.signature(vl.CrossEntropyLoss.forward).parameters.values()]
    theirs = [(p.name, p.kind, p.default)
              for p in inspect.signature(torch.nn.CrossEntropyLoss.forward).parameters.values()]
    assert ours == theirs


def test_is_a_module_and_a_torch_cross_entropy_loss():
    m = vl.CrossEntropyLoss()
    assert isinstance(m, torch.nn.Module)
    assert isinstance(m, torch.nn.modules.loss._WeightedLoss)  # what code may check for a weighted loss


CONFIGS = [
    dict(),
    dict(weight=W),
    dict(ignore_index=3),
    dict(reduction="sum"),
    dict(reduction="none"),
    dict(label_smoothing=0.2),
    dict(weight=W, ignore_index=0, reduction="mean", label_smoothing=0.1),
    dict(weight=W.double(), reduction="none", label_smoothing=1.0),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v if k != 'weight' else 'w'}"
                                                                 for k, v in c.items()) or "default")
def test_attributes_buffers_state_dict_repr(cfg):
    (ours, ow), (theirs, tw) = pair(**cfg)
    assert ow == tw == []
    for attr in ("reduction", "ignore_index", "label_smoothing", "training"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    if theirs.weight is None:
        assert ours.weight is None
    else:
        assert torch.equal(ours.weight, theirs.weight) and ours.weight.dtype == theirs.weight.dtype
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in theirs.named_buffers()]
    assert list(ours.parameters()) == [] == list(theirs.parameters())
    assert list(ours.state_dict().keys()) == list(theirs.state_dict().keys())
    assert "weight" in ours._buffers  # registered as a buffer even when None, as torch does
    assert repr(ours) == repr(theirs)
    assert str(ours) == str(theirs)


def test_weight_is_stored_not_copied_and_is_a_buffer():
    w = W.clone()
    (ours, _), (theirs, _) = pair(weight=w)
    assert ("weight" in dict(ours.named_buffers())) and ("weight" in dict(theirs.named_buffers()))
    assert (ours.weight is w) == (theirs.weight is w)


def test_weight_list_is_rejected_like_torch():
    with pytest.raises(TypeError) as theirs:
        torch.nn.CrossEntropyLoss(weight=[1.0, 2.0])
    with pytest.raises(type(theirs.value)):
        vl.CrossEntropyLoss(weight=[1.0, 2.0])


@pytest.mark.parametrize("cfg", [dict(), dict(weight=W)], ids=["nw", "w"])
def test_state_dict_round_trip_both_ways(cfg):
    (ours, _), (theirs, _) = pair(**cfg)
    sd = theirs.state_dict()
    ours.load_state_dict(sd, strict=True)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    if cfg:
        new = {"weight": torch.arange(1.0, 6.0)}
        ours.load_state_dict(new)
        assert torch.equal(ours.weight, new["weight"])
        x, t = make_logits((4, C), torch.float32, 1), make_index_target((4,), C, 2)
        torch.testing.assert_close(ours(x, t), F.cross_entropy(x, t, new["weight"]))


def test_state_dict_saved_with_torch_save():
    (ours, _), (theirs, _) = pair(weight=W)
    buf = io.BytesIO()
    torch.save(theirs.state_dict(), buf)
    buf.seek(0)
    ours.load_state_dict(torch.load(buf))
    assert torch.equal(ours.weight, W)


@pytest.mark.parametrize("convert", ["double", "half", "bfloat16", "to_f64", "to_device_and_dtype"])
def test_to_moves_the_weight(convert):
    (ours, _), (theirs, _) = pair(weight=W)
    for m in (ours, theirs):
        if convert == "double":
            m.double()
        elif convert == "half":
            m.half()
        elif convert == "bfloat16":
            m.bfloat16()
        elif convert == "to_f64":
            m.to(torch.float64)
        else:
            m.to(device="cpu", dtype=torch.float16)
    assert ours.weight.dtype == theirs.weight.dtype and ours.weight.device == theirs.weight.device
    assert torch.equal(ours.weight, theirs.weight)
    dtype = ours.weight.dtype
    x = make_logits((6, C), dtype, 3)
    t = make_index_target((6,), C, 4, ignore=2)
    compare_cross_entropy(x, t, **calls(ours, theirs))


def test_to_meta_device():
    (ours, _), (theirs, _) = pair(weight=W)
    ours.to("meta")
    theirs.to("meta")
    assert ours.weight.device.type == "meta" == theirs.weight.device.type


def test_to_without_weight_is_a_no_op():
    (ours, _), _ = pair()
    assert ours.double() is ours and ours.weight is None


LEGACY = [(None, False), (False, None), (True, True), (False, False), (True, None), (None, True)]


@pytest.mark.parametrize("size_average,reduce", LEGACY)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none", "avg"])
def test_legacy_args_at_construction(size_average, reduce, reduction):
    """Legacy args are converted (and warn) when the module is built; forward uses the result."""
    (ours, ow), (theirs, tw) = pair(W, size_average, 3, reduce, reduction)
    assert tw, "torch warns on legacy arguments"
    assert ow == tw
    assert ours.reduction == theirs.reduction
    x, t = make_logits((6, C), torch.float32, 1), make_index_target((6,), C, 2, ignore=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compare_cross_entropy(x, t, **calls(ours, theirs))
    assert not [w for w in caught if "size_average" in str(w.message)], "forward must not warn again"


def test_invalid_reduction_fails_in_forward_not_constructor():
    with pytest.raises(ValueError) as theirs_err:
        torch.nn.CrossEntropyLoss(reduction="avg")(torch.randn(3, C), torch.tensor([0, 1, 2]))
    m = vl.CrossEntropyLoss(reduction="avg")  # accepted, as torch
    with pytest.raises(type(theirs_err.value)):
        m(torch.randn(3, C), torch.tensor([0, 1, 2]))


def test_elementwise_mean_warns_in_forward():
    (ours, ow), (theirs, tw) = pair(reduction="elementwise_mean")
    assert ow == tw
    x, t = make_logits((6, C), torch.float32, 1), make_index_target((6,), C, 2)
    _, _, o_warn, t_warn = compare_cross_entropy(x, t, **calls(ours, theirs))
    assert [str(w.message) for w in o_warn] == [str(w.message) for w in t_warn] != []


def test_extra_positional_argument_is_a_type_error():
    x, t = torch.randn(3, C), torch.tensor([0, 1, 2])
    with pytest.raises(TypeError):
        torch.nn.CrossEntropyLoss()(x, t, W)
    with pytest.raises(TypeError):
        vl.CrossEntropyLoss()(x, t, W)


def test_forward_by_keyword():
    x, t = make_logits((3, C), torch.float32, 1), torch.tensor([0, 1, 2])
    torch.testing.assert_close(vl.CrossEntropyLoss()(input=x, target=t),
                               torch.nn.CrossEntropyLoss()(input=x, target=t))


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v if k != 'weight' else 'w'}"
                                                                 for k, v in c.items()) or "default")
@pytest.mark.parametrize("family", ["1d", "2d", "3d", "4d"])
@pytest.mark.parametrize("dt", [torch.float32, torch.float64, torch.bfloat16, torch.float16],
                         ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("tkind", ["index", "prob"])
def test_forward_parity(cfg, family, dt, tkind):
    if tkind == "prob" and cfg.get("ignore_index", -100) >= 0:
        pytest.skip("torch rejects ignore_index >= 0 for probability targets")
    cfg = dict(cfg)
    if "weight" in cfg:
        cfg["weight"] = cfg["weight"].to(dt)  # the class-index path wants the input's dtype
    (ours, _), (theirs, _) = pair(**cfg)
    in_shape, t_shape = FAMILIES[family]
    x = make_logits(in_shape, dt, 7)
    if tkind == "index":
        t = make_index_target(t_shape, C, 8, ignore=cfg.get("ignore_index", -100))
    else:
        t = make_prob_target(in_shape, dt, 8)
    compare_cross_entropy(x, t, **calls(ours, theirs), grad_target=tkind == "prob")


def test_attributes_changed_after_construction_are_used():
    """forward reads self.weight / ignore_index / reduction / label_smoothing each call, as torch."""
    (ours, _), (theirs, _) = pair()
    x, t = make_logits((6, C), torch.float32, 1), make_index_target((6,), C, 2, ignore=4)
    for m in (ours, theirs):
        m.weight = W.clone()
        m.ignore_index = 4
        m.reduction = "sum"
        m.label_smoothing = 0.3
    compare_cross_entropy(x, t, **calls(ours, theirs))


def test_weight_buffer_inplace_update_is_seen():
    (ours, _), (theirs, _) = pair(weight=W.clone())
    x, t = make_logits((6, C), torch.float32, 1), make_index_target((6,), C, 2)
    before = ours(x, t).item()
    with torch.no_grad():
        ours.weight.mul_(torch.tensor([1.0, 3.0, 1.0, 0.5, 2.0]))
        theirs.weight.mul_(torch.tensor([1.0, 3.0, 1.0, 0.5, 2.0]))
    after = ours(x, t)
    assert after.item() != before
    torch.testing.assert_close(after, theirs(x, t))


def test_deepcopy_and_pickle():
    (ours, _), _ = pair(weight=W, ignore_index=2, reduction="sum", label_smoothing=0.1)
    x, t = make_logits((6, C), torch.float32, 1), make_index_target((6,), C, 2, ignore=2)
    expected = F.cross_entropy(x, t, W, ignore_index=2, reduction="sum", label_smoothing=0.1)
    for clone in (copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))):
        assert type(clone) is type(ours)
        torch.testing.assert_close(clone(x, t), expected)
        assert clone.weight is not ours.weight


def test_train_eval_do_not_change_the_loss():
    (ours, _), _ = pair(weight=W, label_smoothing=0.2)
    x, t = make_logits((6, C), torch.float32, 1), make_index_target((6,), C, 2)
    a = ours.train()(x, t)
    b = ours.eval()(x, t)
    assert torch.equal(a, b)


def test_in_a_sequential_with_hooks():
    """Module plumbing works (forward hooks see the loss)."""
    seen = []
    m = vl.CrossEntropyLoss(weight=W)
    m.register_forward_hook(lambda mod, inp, out: seen.append(out.detach()))
    x, t = make_logits((6, C), torch.float32, 1), make_index_target((6,), C, 2)
    out = m(x, t)
    assert len(seen) == 1 and torch.equal(seen[0], out.detach())
    torch.testing.assert_close(out, F.cross_entropy(x, t, W))


def test_module_weight_requires_grad_class_index_raises():
    w = W.clone().requires_grad_()
    x, t = make_logits((6, C), torch.float32, 1), make_index_target((6,), C, 2)
    with pytest.raises(RuntimeError) as theirs:
        torch.nn.CrossEntropyLoss(weight=w)(x, t)
    with pytest.raises(type(theirs.value)):
        vl.CrossEntropyLoss(weight=w)(x, t)


def test_module_weight_grad_probability_path():
    """On the probability path the weight buffer can receive a gradient (torch supports it)."""
    x = make_logits((6, C), torch.float32, 1)
    q = make_prob_target((6, C), torch.float32, 2)
    grads = []
    for cls in (vl.CrossEntropyLoss, torch.nn.CrossEntropyLoss):
        w = W.clone().requires_grad_()
        (cls(weight=w, label_smoothing=0.1)(x, q) * 3.7).backward()
        grads.append(w.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)
