"""check_loader / check_batch / the batch-size message on what users try first (issue 15,
items 11, 12, 15): zipped single-tensor loaders, two final partial batches, arguments of the
wrong type, is_patched at the top level."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import validated_loss as vl
from validated_loss.data import check_loader


def single_tensor_loaders(n_images, n_labels, batch_size=32):
    images = DataLoader(TensorDataset(torch.randn(n_images, 3)), batch_size=batch_size)
    labels = DataLoader(TensorDataset(torch.randint(0, 5, (n_labels,))), batch_size=batch_size)
    return images, labels


def test_zip_of_two_matched_single_tensor_loaders_is_ok():
    images, labels = single_tensor_loaders(1000, 1000)
    report = check_loader(zip(images, labels), num_classes=5)
    assert report.ok, report
    assert report.batches_checked == 32


def test_zip_of_mismatched_single_tensor_loaders_names_the_real_rows():
    images, labels = single_tensor_loaders(1000, 1010)
    report = check_loader(zip(images, labels), num_classes=5)
    assert not report.ok and report.first_bad_batch == 31
    assert "the inputs have 8 rows, the targets 18" in str(report)


def test_two_final_partial_batches_guess_no_batch_size():
    # 1000 images and 1010 labels in batches of 32: the last batches hold 8 and 18.
    message = str(vl.check_batch(torch.randn(8, 5), torch.randint(0, 5, (18,))))
    assert "8 samples but the target has 18" in message
    assert "batch size" not in message and "18 is the" not in message
    with pytest.raises(vl.BatchSizeMismatchError) as raised:
        vl.cross_entropy(torch.randn(8, 5), torch.randint(0, 5, (18,)))
    assert "is the batch size" not in str(raised.value)


@pytest.mark.parametrize("large", [32, 64, 50, 90])
def test_a_round_count_is_still_named_as_a_likely_batch_size(large):
    message = str(vl.check_batch(torch.randn(20, 5), torch.randint(0, 5, (large,))))
    assert f"If {large} is the batch size, 20 looks like a final partial batch" in message


@pytest.mark.parametrize("bad", [[[0.1, 0.9]], np.zeros((1, 2), dtype=np.float32)], ids=["list", "numpy"])
def test_check_batch_on_a_non_tensor_is_a_type_error_naming_what_it_takes(bad):
    with pytest.raises(TypeError, match="argument 'input' .* must be a Tensor, not (list|ndarray)"):
        vl.check_batch(bad, torch.tensor([1]))
    with pytest.raises(TypeError, match="argument 'target' .* must be a Tensor"):
        vl.check_batch(torch.randn(1, 2), bad)


def test_check_loader_refuses_a_negative_or_non_int_num_classes():
    loader = DataLoader(TensorDataset(torch.randn(10, 3), torch.randint(0, 5, (10,))), batch_size=4)
    with pytest.raises(ValueError, match="num_classes .* got -1"):
        check_loader(loader, num_classes=-1)
    with pytest.raises(TypeError, match="num_classes must be an int"):
        check_loader(loader, num_classes=5.0)
    assert check_loader(loader, num_classes=np.int64(5)).ok


def test_is_patched_at_the_top_level():
    assert vl.is_patched() is False
    with vl.patched():
        assert vl.is_patched() is True
    assert "is_patched" in vl.__all__
