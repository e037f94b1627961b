"""validated_loss.data.check_loader: the first bad batch of a DataLoader, and why."""

import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, IterableDataset, SequentialSampler, TensorDataset

import validated_loss as vl
from validated_loss.data import LoaderReport, check_loader

N, BATCH, CLASSES = 1000, 32, 10  # 1000 % 32 = 8: the last batch holds 8 samples


def inputs(n=N):
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(n))


def labels(n=N):
    return torch.randint(0, CLASSES, (n,), generator=torch.Generator().manual_seed(n + 1))


def loader(*tensors, batch_size=BATCH, **kwargs):
    return DataLoader(TensorDataset(*tensors), batch_size=batch_size, **kwargs)


# ---- the seed-style example: drop_last on one side only ----------------------------


@pytest.mark.parametrize("drop_on", ["target", "input"])
def test_drop_last_on_one_side_reports_batch_31_remainder_8_and_drop_last(drop_on):
    input_loader = loader(inputs(), drop_last=drop_on == "input")
    target_loader = loader(labels(), drop_last=drop_on == "target")
    assert len(list(zip(input_loader, target_loader))) == 31  # zip() says nothing about batch 31

    report = check_loader(input_loader, target_loader=target_loader, num_classes=CLASSES)

    assert not report.ok
    assert report.first_bad_batch == 31
    assert report.batches_checked == 31
    assert isinstance(report.error, vl.BatchSizeMismatchError)
    message = report.problems[0]
    assert message.startswith("batch 31:")
    assert "1000 % 32 = 8" in message
    assert f"drop_last differs: True on the {drop_on} loader" in message
    assert "drop_last=False" in message and "drop_last=True" in message
    assert "zip() stops" in message
    assert "problem at batch 31" in str(report)


def test_partial_batch_against_a_full_one_names_both_loaders():
    # 1000 inputs (last batch 8) against 1024 targets with drop_last=True (32 full batches).
    report = check_loader(loader(inputs()), target_loader=loader(labels(1024), drop_last=True))
    assert report.first_bad_batch == 31 and report.batches_checked == 32
    message = report.problems[0]
    assert message.startswith("batch 31 (the last of 32): the inputs have 8 rows, the targets 32")
    assert "Expected input batch_size (8) to match target batch_size (32)" in message
    assert "the input loader: 1000 samples, batch_size=32, drop_last=False -> 32 batches" in message
    assert "the target loader: 1024 samples, batch_size=32, drop_last=True" in message
    assert "1000 % 32 = 8" in message
    assert "(1000 inputs, 1024 targets)" in message
    # The report is right about the loss: that pairing does raise.
    x8, y32 = next(iter(loader(torch.randn(8, CLASSES)))), labels(1024)[:32]
    with pytest.raises(vl.BatchSizeMismatchError):
        vl.cross_entropy(x8[0], y32)


def test_raise_on_error_raises_the_error_with_the_batch_index():
    with pytest.raises(RuntimeError) as info:  # what seed-style code catches
        check_loader(loader(inputs()), target_loader=loader(labels(1024), drop_last=True), raise_on_error=True)
    assert isinstance(info.value, vl.BatchSizeMismatchError)
    assert "batch 31" in str(info.value)


def test_does_not_raise_by_default():
    report = check_loader(loader(inputs()), target_loader=loader(labels(), drop_last=True))
    assert isinstance(report, LoaderReport) and not report.ok


@pytest.mark.parametrize("drop_on", ["target", "input"])
def test_max_batches_still_reports_where_zip_will_stop(drop_on):
    keeps = "input" if drop_on == "target" else "target"
    report = check_loader(loader(inputs(), drop_last=drop_on == "input"),
                          target_loader=loader(labels(), drop_last=drop_on == "target"), max_batches=3)
    assert report.batches_checked == 3
    assert report.first_bad_batch == 31
    message = report.problems[0]
    assert message.startswith(f"batch 31: the {keeps} loader yields 8 samples but the {drop_on} loader is "
                              "exhausted after 31 batches")
    assert "different lengths" in message


def test_different_batch_sizes_are_named():
    report = check_loader(loader(inputs(64), batch_size=32), target_loader=loader(labels(64), batch_size=16))
    assert report.first_bad_batch == 0
    assert "batch_size differs (32 for inputs, 16 for targets)" in report.problems[0]


# ---- good loaders -------------------------------------------------------------------


def test_a_good_loader_is_ok():
    data = loader(inputs(), labels())
    report = check_loader(data, num_classes=CLASSES)
    assert report.ok and report.first_bad_batch is None and report.error is None
    assert report.batches_checked == len(data) == report.num_batches == 32
    assert report.problems == [] and report.warnings == []
    assert str(report).startswith("check_loader: OK; 32 of 32 batches checked")


def test_two_good_loaders_are_ok():
    report = check_loader(loader(inputs()), target_loader=loader(labels()), num_classes=CLASSES)
    assert report.ok and report.batches_checked == 32


def test_plain_iterables_and_generators():
    pairs = [(torch.randn(4, 3), torch.randint(0, 5, (4,))) for _ in range(3)]
    assert check_loader(pairs, num_classes=5).ok
    report = check_loader(iter(pairs + [(torch.randn(4, 3), torch.randint(0, 5, (5,)))]))
    assert report.first_bad_batch == 3 and report.num_batches is None


def test_max_batches_limits_the_walk():
    report = check_loader(loader(inputs(), labels()), max_batches=5)
    assert report.ok and report.batches_checked == 5


# ---- target values ------------------------------------------------------------------


def test_out_of_range_target_with_batch_row_and_dataset_item():
    y = labels()
    y[77] = CLASSES  # batch 2, row 13
    report = check_loader(loader(inputs(), y), num_classes=CLASSES)
    assert report.first_bad_batch == 2 and report.batches_checked == 3
    error = report.error
    assert isinstance(error, vl.TargetOutOfRangeError) and isinstance(error, IndexError)
    assert error.position == (13,) and error.value == CLASSES and error.num_classes == CLASSES
    assert "batch 2 (of 32, counting from 0), row 13: dataset item 77" in str(error)
    assert "target[13] = 10 is not a class index in [0, 10)" in str(error)
    with pytest.raises(vl.TargetOutOfRangeError, match="batch 2"):
        check_loader(loader(inputs(), y), num_classes=CLASSES, raise_on_error=True)


def test_ignore_index_is_not_out_of_range():
    y = labels()
    y[::7] = -100
    assert check_loader(loader(inputs(), y), num_classes=CLASSES).ok
    y[5] = 3
    y[::7] = 255
    assert check_loader(loader(inputs(), y), num_classes=CLASSES, ignore_index=255).ok
    assert not check_loader(loader(inputs(), y), num_classes=CLASSES).ok


def test_without_num_classes_only_negative_targets_are_checked():
    y = labels()
    y[40] = 1000
    assert check_loader(loader(inputs(), y)).ok
    y[41] = -1
    report = check_loader(loader(inputs(), y))
    assert report.first_bad_batch == 1
    assert report.error.position == (9,) and report.error.value == -1
    assert "pass ignore_index=-1" in report.problems[0]


def test_check_values_false_reads_shapes_only():
    y = labels()
    y[0] = 99
    assert check_loader(loader(inputs(), y), num_classes=CLASSES, check_values=False).ok


def test_spatial_targets_out_of_range_position():
    masks = torch.randint(0, 4, (6, 5, 7))
    masks[4, 2, 3] = 9
    report = check_loader(loader(torch.randn(6, 3, 5, 7), masks, batch_size=4), num_classes=4)
    assert report.first_bad_batch == 1
    assert report.error.position == (0, 2, 3)
    assert "target[0, 2, 3] = 9" in report.problems[0]


# ---- target dtype and layout --------------------------------------------------------


def test_float_class_indices_are_reported_with_the_fix():
    report = check_loader(loader(inputs(), labels().float()), num_classes=CLASSES)
    assert report.first_bad_batch == 0
    assert isinstance(report.error, vl.TargetDtypeError)
    assert report.problems[0].startswith("batch 0 (of 32, counting from 0): ")
    assert "target.long()" in report.problems[0]


def test_probability_targets_are_accepted():
    probs = torch.softmax(torch.randn(100, CLASSES), 1)
    assert check_loader(loader(inputs(100), probs), num_classes=CLASSES).ok
    report = check_loader(loader(inputs(100)), target_loader=loader(probs, batch_size=20))
    assert isinstance(report.error, vl.BatchSizeMismatchError)


def test_targets_flattened_in_a_single_loader():
    pairs = [(torch.randn(4, 7), torch.randint(0, 5, (24,)))]
    report = check_loader(pairs, num_classes=5)
    assert isinstance(report.error, vl.BatchSizeMismatchError)
    message = report.problems[0]
    assert "the inputs have 4 rows, the targets 24" in message
    assert "one loader yields both" in message and "6 entries per input row" in message


def test_column_target_warns_about_squeeze():
    report = check_loader(loader(inputs(64), labels(64)[:, None]), num_classes=CLASSES)
    assert report.ok
    assert any("squeeze(1)" in w for w in report.warnings)


def test_two_loaders_shuffled_independently_warn():
    report = check_loader(loader(inputs(), shuffle=True), target_loader=loader(labels()))
    assert report.ok
    assert any("shuffle independently" in w for w in report.warnings)
    assert check_loader(loader(inputs(), labels(), shuffle=True)).warnings == []


def test_datasets_of_different_lengths_warn_when_batches_agree():
    report = check_loader(loader(inputs(1000), drop_last=True), target_loader=loader(labels(1010), drop_last=True))
    assert report.ok and report.batches_checked == 31
    assert any("different lengths (1000 inputs, 1010 targets)" in w for w in report.warnings)


# ---- batch formats ------------------------------------------------------------------


def test_dict_batches():
    items = [{"pixel_values": torch.randn(3), "labels": torch.tensor(i % 4)} for i in range(10)]
    assert check_loader(DataLoader(items, batch_size=4), num_classes=4).ok
    items[9]["labels"] = torch.tensor(4)
    report = check_loader(DataLoader(items, batch_size=4), num_classes=4)
    assert report.first_bad_batch == 2 and report.error.position == (1,)


def test_dict_with_unknown_keys_asks_for_functions():
    items = [{"a": torch.randn(3), "b": torch.tensor(1)} for _ in range(4)]
    with pytest.raises(TypeError, match="input_fn"):
        check_loader(DataLoader(items, batch_size=2))
    report = check_loader(DataLoader(items, batch_size=2), input_fn=lambda b: b["a"], target_fn=lambda b: b["b"],
                          num_classes=2)
    assert report.ok


def test_input_fn_and_target_fn_with_two_loaders():
    report = check_loader(loader(inputs(64), labels(64)), target_loader=loader(labels(64), batch_size=16),
                          input_fn=lambda b: b[0], target_fn=lambda b: b[0])
    assert report.first_bad_batch == 0


def test_custom_batch_sampler_is_described():
    sampler = BatchSampler(SequentialSampler(range(100)), batch_size=30, drop_last=False)
    data = DataLoader(TensorDataset(inputs(100)), batch_sampler=sampler)
    report = check_loader(data, target_loader=loader(labels(100), batch_size=30, drop_last=True))
    assert report.first_bad_batch == 3
    assert "100 % 30 = 10" in report.problems[0]


def test_iterable_dataset():
    class Stream(IterableDataset):
        def __iter__(self):
            for i in range(10):
                yield torch.randn(3), torch.tensor(i % 3)

    assert check_loader(DataLoader(Stream(), batch_size=4), num_classes=3).ok
    assert not check_loader(DataLoader(Stream(), batch_size=4), num_classes=2).ok


# ---- progress bar -------------------------------------------------------------------


def test_progress_bar_on_request(capsys):
    check_loader(loader(inputs(), labels()), progress=True)
    err = capsys.readouterr().err
    assert "check_loader" in err and "32/32" in err


def test_no_progress_bar_when_off_or_not_a_terminal(capsys):
    check_loader(loader(inputs(), labels()), progress=False)
    check_loader(loader(inputs(), labels()))  # stderr is captured: not a terminal
    assert capsys.readouterr().err == ""
