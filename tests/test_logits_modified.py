"""Logits edited in place after the loss (issue 15, item 13). validated_loss keeps the logits for
the backward, torch their log-softmax: where torch's backward does not notice the edit, ours
raises LogitsModifiedError (a RuntimeError) that says why and what to do (README: differences
from torch). Edits through .data are invisible to autograd and change our gradient silently:
pinned here so the README's statement stays true."""

import pytest
import torch
import torch.nn.functional as F

from conftest import gen, require_vl

vl = require_vl()


def test_in_place_edit_after_the_loss_is_explained():
    logits = torch.randn(4, 5, generator=gen(1)).requires_grad_()
    scaled = logits * 1.0  # not a leaf: in-place edits are allowed
    loss = vl.cross_entropy(scaled, torch.tensor([0, 1, 2, 3]))
    scaled.div_(2.0)  # temperature for sampling
    with pytest.raises(vl.LogitsModifiedError, match="modified in place after the loss") as raised:
        loss.backward()
    assert isinstance(raised.value, RuntimeError)
    assert "edit a copy" in str(raised.value)


def test_torch_does_not_notice_the_same_edit():
    # The difference the README states: torch saved the log-softmax and returns its gradient.
    logits = torch.randn(4, 5, generator=gen(1)).requires_grad_()
    scaled = logits * 1.0
    loss = F.cross_entropy(scaled, torch.tensor([0, 1, 2, 3]))
    scaled.div_(2.0)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_a_data_edit_changes_our_gradient_silently():
    x = torch.randn(4, 5, generator=gen(2))
    t = torch.tensor([0, 1, 2, 3])
    leaf = x.clone().requires_grad_()
    loss = vl.cross_entropy(leaf, t)
    leaf.data.mul_(3.0)
    loss.backward()
    ref = x.clone().requires_grad_()
    F.cross_entropy(ref, t).backward()
    assert not torch.allclose(leaf.grad, ref.grad)  # the gradient of the edited values, not of x
