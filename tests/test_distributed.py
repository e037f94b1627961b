"""validated_loss.distributed on real multi-process groups: gloo on the CPU, 2 and 3 ranks.

Each world size gets one group of worker processes (spawned once, reused by every test; a test that
fails restarts it). A test sends the full tensors to every rank; each rank takes its own slice of the
classes, runs vocab_parallel_cross_entropy forward and backward, and sends back its loss and the
gradient of its slice, or the error it raised. The parent compares them with F.cross_entropy on the
full logits (and the errors with single-process validated_loss.cross_entropy's).

Collectives time out after COLLECTIVE_TIMEOUT seconds and answers after RESULT_TIMEOUT, so a rank
left waiting in a collective fails the test instead of hanging the suite. Error scenarios end with a
valid call on every rank: had one rank entered a collective its peers skipped, that call would pair
with it and fail.
"""

import io
import itertools
import queue as queue_module
import socket
import time
import traceback
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from conftest import assert_close_to_torch, gen

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="needs torch.distributed with gloo")

COLLECTIVE_TIMEOUT = 20
RESULT_TIMEOUT = 90


def _dumps(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _loads(data: bytes):
    return torch.load(io.BytesIO(data), weights_only=False)  # our own processes' data


# =============================================================================
# The worker processes
# =============================================================================


def _serve(rank, world, port, tasks, results):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=COLLECTIVE_TIMEOUT))
    try:
        while True:
            item = tasks.get()
            if item is None:
                break
            name, payload = item
            try:
                answer = ("ok", _dumps(globals()[name](rank, world, *_loads(payload))))
            except BaseException:  # noqa: BLE001  (reported to the parent, which fails the test)
                answer = ("error", traceback.format_exc())
            results.put((rank, answer))
    finally:
        time.sleep(0.2)  # gloo's threads get the GIL first (benchmarks/distributed_bytes.py says why)
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Group:
    def __init__(self, world):
        context = mp.get_context("spawn")
        self.world = world
        self.tasks = [context.Queue() for _ in range(world)]
        self.results = context.Queue()
        port = _free_port()
        self.processes = [context.Process(target=_serve, args=(r, world, port, self.tasks[r], self.results),
                                          daemon=True) for r in range(world)]
        for process in self.processes:
            process.start()
        self.alive = True

    def run(self, name, *args):
        """Runs the module-level task `name(rank, world, *args)` on every rank; its results by rank."""
        payload = _dumps(args)
        for tasks in self.tasks:
            tasks.put((name, payload))
        answers = {}
        deadline = time.monotonic() + RESULT_TIMEOUT
        while len(answers) < self.world:
            try:
                rank, answer = self.results.get(timeout=1.0)
                answers[rank] = answer
                continue
            except queue_module.Empty:
                pass
            missing = sorted(set(range(self.world)) - set(answers))
            dead = [r for r in missing if not self.processes[r].is_alive()]
            if dead or time.monotonic() > deadline:
                self.close()
                pytest.fail(f"{name}: ranks {missing} did not answer "
                            + (f"(ranks {dead} exited)" if dead else
                               f"within {RESULT_TIMEOUT} s (left waiting in a collective?)"))
        failures = {r: a[1] for r, a in answers.items() if a[0] == "error"}
        if failures:
            self.close()
            pytest.fail("\n".join(f"{name} failed on rank {r}:\n{tb}" for r, tb in sorted(failures.items())))
        return [_loads(answers[r][1]) for r in range(self.world)]

    def close(self):
        if not self.alive:
            return
        self.alive = False
        for tasks in self.tasks:
            tasks.put(None)
        for process in self.processes:
            process.join(timeout=COLLECTIVE_TIMEOUT + 10)
        for process in self.processes:
            if process.is_alive():
                process.kill()
                process.join()


@pytest.fixture(scope="module")
def groups():
    started = {}

    def get(world):
        if world not in started or not started[world].alive:
            started[world] = _Group(world)
        return started[world]

    yield get
    for group in started.values():
        group.close()


# =============================================================================
# Tasks (run in the workers)
# =============================================================================


def _offsets(splits):
    return [sum(splits[:r]) for r in range(len(splits))]


def _shard(full, splits, rank):
    class_dim = 0 if full.dim() == 1 else 1
    return full.narrow(class_dim, _offsets(splits)[rank], splits[rank])


def _raised(error):
    return {"raised": type(error).__name__, "message": str(error),
            "attrs": {k: getattr(error, k) for k in ("position", "value", "num_classes", "count", "ranks", "sizes")
                      if hasattr(error, k)}}


def _task_loss(rank, world, cases):
    """Each case: full logits, target, weight, kwargs, splits, grad_output (and optional per-rank
    overrides). Returns per case {"loss", "grad"} or the error raised."""
    from validated_loss.distributed import vocab_parallel_cross_entropy

    out = []
    for case in cases:
        per_rank = case.get("per_rank", {}).get(rank, {})
        target = per_rank.get("target", case["target"])
        logits = per_rank.get("logits", case["logits"])
        weight = per_rank.get("weight", case["weight"])
        kwargs = dict(case["kwargs"], **per_rank.get("kwargs", {}))
        shard = _shard(logits, case["splits"], rank).detach().clone().requires_grad_()
        try:
            loss = vocab_parallel_cross_entropy(shard, target, weight=weight, **kwargs)
        except Exception as error:  # noqa: BLE001  (the parent decides whether it was expected)
            out.append(_raised(error))
            continue
        loss.backward(case["grad_output"])
        out.append({"loss": loss.detach(), "grad": shard.grad})
    return out


def _task_check_batch(rank, world, sizes, via_loss):
    """Data parallel: rank r holds sizes[r] = (input rows, target rows). via_loss: call the loss on
    each rank's own single-rank group with check_batch=<the world group> instead."""
    from validated_loss.distributed import check_batch_consistency, vocab_parallel_cross_entropy

    n_in, n_tgt = sizes[rank]
    logits = torch.randn(n_in, 5)
    target = torch.randint(0, 5, (n_tgt,))
    own = [dist.new_group([r]) for r in range(world)][rank] if via_loss else None
    try:
        if via_loss:
            result = vocab_parallel_cross_entropy(logits, target, group=own, check_batch=dist.group.WORLD)
        else:
            result = check_batch_consistency(logits, target)
    except Exception as error:  # noqa: BLE001
        return _raised(error)
    return {"result": result}


def _task_bytes(rank, world, splits, rows, dtype, label_smoothing):
    """Bytes each collective of one forward and one backward carries on this rank."""
    from validated_loss.distributed import vocab_parallel_cross_entropy

    counted = {"all_reduce": 0, "all_gather": 0, "largest": 0}
    originals = {"all_reduce": dist.all_reduce, "all_gather": dist.all_gather}

    def counting(name):
        def wrapper(*args, **kwargs):
            tensors = args[0] if name == "all_gather" else [args[0]]  # all_gather's outputs: the gathered data
            size = sum(t.numel() * t.element_size() for t in tensors)
            counted[name] += size
            counted["largest"] = max(counted["largest"], max(t.numel() * t.element_size() for t in tensors))
            return originals[name](*args, **kwargs)
        return wrapper

    torch.manual_seed(1)
    full = torch.randn(rows, sum(splits)).to(dtype)
    target = torch.randint(0, sum(splits), (rows,))
    shard = _shard(full, splits, rank).clone().requires_grad_()
    dist.all_reduce, dist.all_gather = counting("all_reduce"), counting("all_gather")
    try:
        loss = vocab_parallel_cross_entropy(shard, target, label_smoothing=label_smoothing)
        forward = dict(counted)
        counted.update(all_reduce=0, all_gather=0, largest=0)
        loss.backward()
        backward = dict(counted)
    finally:
        dist.all_reduce, dist.all_gather = originals["all_reduce"], originals["all_gather"]
    return {"forward": forward, "backward": backward, "shard_bytes": shard.numel() * shard.element_size()}


# =============================================================================
# Cases and comparison (parent)
# =============================================================================


def _make_case(shape, splits, *, dtype=torch.float64, reduction="mean", label_smoothing=0.0, weighted=False,
               ignore_index=-100, ignored=0.2, seed=0, spread=3.0, shift=0.0):
    """shape: the full logits' shape with the class dim's size = sum(splits)."""
    g = gen(seed)
    classes = sum(splits)
    logits = (torch.randn(shape, generator=g, dtype=torch.float64) * spread + shift).to(dtype)
    target_shape = () if len(shape) == 1 else (shape[0],) + tuple(shape[2:])
    target = torch.randint(0, classes, target_shape, generator=g)
    if ignored and target.numel():
        mask = torch.rand(target_shape, generator=g) < ignored
        target = torch.where(mask, torch.full_like(target, ignore_index), target)
    weight = (torch.rand(classes, generator=g, dtype=torch.float64) * 2 + 0.1).to(dtype) if weighted else None
    grad_output = (torch.randn(target_shape, generator=g, dtype=torch.float64) * 2 + 0.5).to(dtype) \
        if reduction == "none" else torch.tensor(3.7, dtype=dtype)
    kwargs = dict(reduction=reduction, label_smoothing=label_smoothing, ignore_index=ignore_index)
    return dict(logits=logits, target=target, weight=weight, kwargs=kwargs, splits=list(splits),
                grad_output=grad_output)


def _torch_reference(case, cast=None):
    x = case["logits"].detach().clone()
    weight, grad_output = case["weight"], case["grad_output"]
    if cast is not None:
        x = x.to(cast)
        weight = None if weight is None else weight.to(cast)
        grad_output = grad_output.to(cast)
    x.requires_grad_()
    loss = F.cross_entropy(x, case["target"], weight, **case["kwargs"])
    (grad,) = torch.autograd.grad(loss, x, grad_output)
    return loss.detach(), grad


def _describe(case):
    kw = case["kwargs"]
    return (f"logits {tuple(case['logits'].shape)} {case['logits'].dtype} split {case['splits']}, "
            f"reduction={kw['reduction']} label_smoothing={kw['label_smoothing']} ignore_index={kw['ignore_index']} "
            f"weight={'yes' if case['weight'] is not None else 'no'}")


def _check_against_torch(case, answers):
    """answers: each rank's {"loss", "grad"} for this case."""
    what = _describe(case)
    for rank, answer in enumerate(answers):
        assert "raised" not in answer, f"{what}: rank {rank} raised {answer.get('raised')}: {answer.get('message')}"
    # Every rank computes the loss from the same all-reduced numbers: bitwise equal.
    for rank, answer in enumerate(answers[1:], start=1):
        torch.testing.assert_close(answer["loss"], answers[0]["loss"], rtol=0, atol=0, equal_nan=True,
                                   msg=lambda m: f"{what}: rank {rank}'s loss differs from rank 0's: {m}")
    loss, grad = _torch_reference(case)
    truth_loss, truth_grad = _torch_reference(case, torch.float64)
    precision = case["logits"].dtype
    grad_scale = case["grad_output"].double().abs().max().item() * (
        case["weight"].double().abs().max().item() if case["weight"] is not None else 1.0)
    if case["kwargs"]["reduction"] == "mean":
        grad_scale /= max(1, case["target"].numel())
    assert_close_to_torch(answers[0]["loss"], loss, truth_loss, precision=precision, what=f"loss ({what})")
    for rank, answer in enumerate(answers):
        assert_close_to_torch(answer["grad"], _shard(grad, case["splits"], rank),
                              _shard(truth_grad, case["splits"], rank), precision=precision,
                              what=f"rank {rank}'s gradient ({what})", scale=grad_scale)


def _run_cases(group, cases):
    answers = group.run("_task_loss", cases)  # answers[rank][case]
    for i, case in enumerate(cases):
        _check_against_torch(case, [answers[r][i] for r in range(group.world)])


# =============================================================================
# Parity with F.cross_entropy on the gathered logits
# =============================================================================

SPLITS = [
    pytest.param((8, 8), id="2-even"),
    pytest.param((3, 14), id="2-uneven"),
    pytest.param((6, 6, 6), id="3-even"),
    pytest.param((1, 9, 5), id="3-uneven"),
    pytest.param((7, 0, 8), id="3-empty-shard"),
]


@pytest.mark.parametrize("splits", SPLITS)
def test_matches_torch_every_reduction_smoothing_weight_ignore_index(groups, splits):
    cases = []
    for seed, (reduction, smoothing, weighted, ignore_index) in enumerate(itertools.product(
            ("none", "mean", "sum"), (0.0, 0.3), (False, True), (-100, 2))):
        cases.append(_make_case((12, sum(splits)), splits, reduction=reduction, label_smoothing=smoothing,
                                weighted=weighted, ignore_index=ignore_index, seed=seed))
    _run_cases(groups(len(splits)), cases)


def test_matches_torch_shapes_and_dtypes(groups):
    splits = (5, 12)
    cases = [
        _make_case((4, 17, 3), splits, reduction="none", label_smoothing=0.1, weighted=True, seed=1),  # (N, C, d)
        _make_case((2, 17, 3, 2), splits, reduction="mean", label_smoothing=0.2, seed=2),            # (N, C, d1, d2)
        _make_case((17,), splits, reduction="none", seed=3, ignored=0),                               # unbatched
        _make_case((17,), splits, reduction="mean", label_smoothing=0.1, seed=4, ignored=0),
        _make_case((0, 17), splits, reduction="mean", seed=5),                                         # no rows: NaN
        _make_case((0, 17), splits, reduction="sum", label_smoothing=0.1, seed=6),
        _make_case((16, 17), splits, dtype=torch.float32, reduction="mean", label_smoothing=0.1, weighted=True, seed=7),
        _make_case((16, 17), splits, dtype=torch.float32, reduction="none", seed=8),
        _make_case((16, 17), splits, dtype=torch.bfloat16, reduction="mean", label_smoothing=0.1, seed=9),
        _make_case((16, 17), splits, dtype=torch.float16, reduction="none", weighted=True, seed=10),
        # Large logits: the sums are taken against the global row max, so nothing cancels.
        _make_case((16, 17), splits, dtype=torch.float32, reduction="none", label_smoothing=0.2, seed=11, shift=2e4),
        # A very peaked row: its max sits on one rank only, the other rank's exp terms underflow.
        _make_case((16, 17), splits, reduction="sum", label_smoothing=0.1, seed=12, spread=60.0),
        # Every target ignored: 'mean' is 0/0 = NaN and the gradient zero, as torch.
        _make_case((6, 17), splits, reduction="mean", label_smoothing=0.1, seed=13, ignored=1.0),
    ]
    # Zero total weight (the only non-ignored targets have weight 0): NaN mean, as torch.
    zero = _make_case((6, 17), splits, reduction="mean", weighted=True, seed=14, ignored=0)
    zero["target"] = torch.tensor([0, 1, 15, 0, 1, 15])
    zero["weight"][[0, 1, 15]] = 0.0
    cases.append(zero)
    _run_cases(groups(2), cases)


def test_padded_vocabulary_masked_with_minus_inf(groups):
    # Padding classes at the end of the vocabulary, masked with -inf: the last rank's shard is partly
    # or entirely -inf for every row.
    cases = []
    for seed, (reduction, smoothing) in enumerate(itertools.product(("none", "sum"), (0.0, 0.1))):
        case = _make_case((8, 15), (6, 5, 4), reduction=reduction, label_smoothing=smoothing, seed=seed, ignored=0.3)
        case["logits"][:, 11:] = float("-inf")
        case["logits"][:3, 9:] = float("-inf")
        case["target"] = case["target"] % 9
        cases.append(case)
    _run_cases(groups(3), cases)


# =============================================================================
# Errors: raised on every rank, and no rank left waiting
# =============================================================================


def _single_process_error(case):
    import validated_loss as vl

    with pytest.raises(Exception) as info:
        vl.cross_entropy(case["logits"], case["target"], case["weight"], **case["kwargs"])
    return info.value


def _good_call(world):
    return _make_case((4, 3 * world), (3,) * world, seed=99)


def _run_error_case(group, case):
    """Runs the erroneous case, then a valid call; returns each rank's answer to the first."""
    follow_up = _good_call(group.world)
    answers = group.run("_task_loss", [case, follow_up])
    _check_against_torch(follow_up, [a[1] for a in answers])
    return [a[0] for a in answers]


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("bad", [pytest.param("num_classes", id="value=C"), pytest.param(-5, id="negative"),
                                 pytest.param(255, id="255")])
def test_out_of_range_target_raises_on_every_rank(groups, world, bad):
    splits = (4, 6) if world == 2 else (4, 1, 5)
    case = _make_case((6, 3), splits, seed=5, ignored=0)
    case["logits"] = torch.randn(6, sum(splits), dtype=torch.float64)
    # Class 5 lies beyond rank 0's shard but inside the global vocabulary: valid.
    case["target"] = torch.tensor([5, 0, 9, 1, 7, 9])
    case["target"][3] = sum(splits) if bad == "num_classes" else bad
    case["target"][5] = sum(splits) + 1
    expected = _single_process_error(case)
    answers = _run_error_case(groups(world), case)
    for rank, answer in enumerate(answers):
        assert answer.get("raised") == "TargetOutOfRangeError", f"rank {rank}: {answer}"
        assert answer["message"] == str(expected), f"rank {rank}"
        assert answer["attrs"]["position"] == (3,) and answer["attrs"]["num_classes"] == sum(splits)
        assert answer["attrs"]["count"] == 2


def test_out_of_range_target_on_one_rank_only(groups):
    case = _make_case((6, 10), (4, 6), seed=6, ignored=0)
    bad_target = case["target"].clone()
    bad_target[2] = 10
    case["per_rank"] = {1: {"target": bad_target}}
    expected = _single_process_error(dict(case, target=bad_target))
    answers = _run_error_case(groups(2), case)
    assert answers[1].get("raised") == "TargetOutOfRangeError" and answers[1]["message"] == str(expected)
    assert answers[0].get("raised") == "TargetOutOfRangeError", answers[0]
    assert "rank 1" in answers[0]["message"] and "[0, 10)" in answers[0]["message"]


def test_batch_mismatch_between_ranks_of_the_loss(groups):
    case = _make_case((8, 12), (4, 4, 4), seed=7)
    short = _make_case((6, 12), (4, 4, 4), seed=7)
    case["per_rank"] = {2: {"logits": short["logits"], "target": short["target"]}}
    answers = _run_error_case(groups(3), case)
    for rank, answer in enumerate(answers):
        assert answer.get("raised") == "BatchSizeMismatchError", f"rank {rank}: {answer}"
        assert "rank 2 has 6 rows, ranks 0, 1 have 8 (2 fewer)" in answer["message"], answer["message"]
        assert answer["attrs"]["ranks"] == [2]
    assert len({a["message"] for a in answers}) == 1


@pytest.mark.parametrize("scenario", ["smoothing", "ignore_index", "weight", "dtype"])
def test_ranks_with_different_arguments_all_raise(groups, scenario):
    case = _make_case((5, 9), (4, 5), seed=8)
    differing = {"smoothing": {"kwargs": {"label_smoothing": 0.1}},
                 "ignore_index": {"kwargs": {"ignore_index": -1}},
                 "dtype": {"logits": case["logits"].float()},
                 "weight": {"weight": torch.rand(9, dtype=torch.float64)}}  # only rank 1 has a weight
    case["per_rank"] = {1: differing[scenario]}
    answers = _run_error_case(groups(2), case)
    for rank, answer in enumerate(answers):
        assert answer.get("raised") == "RankMismatchError", f"rank {rank}: {answer}"
        assert answer["attrs"]["ranks"] == (1,)
        assert "rank 1 differs from rank 0" in answer["message"]


def test_an_argument_rejected_on_one_rank_raises_everywhere(groups):
    case = _make_case((5, 9), (4, 5), seed=9)
    case["per_rank"] = {0: {"kwargs": {"reduction": "avg"}}}
    answers = _run_error_case(groups(2), case)
    assert answers[0].get("raised") == "ValueError" and "avg" in answers[0]["message"]
    assert answers[1].get("raised") == "RankMismatchError" and answers[1]["attrs"]["ranks"] == (0,)


@pytest.mark.parametrize("scenario", ["smoothing>1", "shard-sized weight", "target shape", "float target"])
def test_invalid_arguments_raise_the_single_process_error_on_every_rank(groups, scenario):
    case = _make_case((5, 9), (4, 5), seed=10)
    if scenario == "smoothing>1":
        case["kwargs"]["label_smoothing"] = 1.5
    elif scenario == "shard-sized weight":
        case["weight"] = torch.rand(4, dtype=torch.float64)
    elif scenario == "target shape":
        case["target"] = case["target"].clamp(min=0).view(5, 1).expand(5, 2).contiguous()
    else:
        case["target"] = torch.rand(5, 9, dtype=torch.float64)
    answers = _run_error_case(groups(2), case)
    if scenario == "float target":
        for answer in answers:
            assert answer.get("raised") == "TargetDtypeError" and "class indices" in answer["message"], answer
        return
    expected = _single_process_error(case)
    for rank, answer in enumerate(answers):
        assert answer.get("raised") == type(expected).__name__, f"rank {rank}: {answer}"
        if scenario != "shard-sized weight":
            assert answer["message"] == str(expected)
        else:  # the weight is checked against the global C
            assert "9" in answer["message"] and "4" in answer["message"]


# =============================================================================
# Data-parallel batch checks
# =============================================================================


@pytest.mark.parametrize("via_loss", [False, True], ids=["check_batch_consistency", "loss-check_batch"])
def test_uneven_last_batch_names_the_rank(groups, via_loss):
    answers = groups(3).run("_task_check_batch", [(32, 32), (32, 32), (24, 24)], via_loss)
    for rank, answer in enumerate(answers):
        assert answer.get("raised") == "BatchSizeMismatchError", f"rank {rank}: {answer}"
        message = answer["message"]
        assert "rank 2 has 24 rows, ranks 0, 1 have 32 (8 fewer)" in message, message
        assert "uneven last batch" in message and "drop_last=True" in message, message
        assert answer["attrs"]["ranks"] == [2] and answer["attrs"]["sizes"] == [(32, 32), (32, 32), (24, 24)]
    assert isinstance(answers[0], dict) and len({a["message"] for a in answers}) == 1


def test_input_and_target_disagree_on_one_rank(groups):
    answers = groups(2).run("_task_check_batch", [(32, 32), (32, 30)], False)
    for answer in answers:
        assert answer.get("raised") == "BatchSizeMismatchError", answer
        assert "rank 1 has 32 input rows and 30 target rows, rank 0 has 32 rows" in answer["message"]
        assert "different batches" in answer["message"]
        assert answer["attrs"]["ranks"] == [1]


def test_larger_batch_on_one_rank(groups):
    answers = groups(3).run("_task_check_batch", [(16, 16), (64, 64), (16, 16)], False)
    for answer in answers:
        assert "rank 1 has 64 rows, ranks 0, 2 have 16 (48 more)" in answer["message"], answer
        assert "different batch sizes" in answer["message"]


def test_consistent_batches_pass(groups):
    answers = groups(3).run("_task_check_batch", [(16, 16)] * 3, False)
    assert all(a == {"result": [(16, 16)] * 3} for a in answers), answers
    answers = groups(3).run("_task_check_batch", [(16, 16)] * 3, True)
    assert all("result" in a and a["result"].dim() == 0 for a in answers), answers


# =============================================================================
# What crosses the network
# =============================================================================


@pytest.mark.parametrize("dtype,smoothing", [(torch.float32, 0.0), (torch.bfloat16, 0.1), (torch.float64, 0.1)])
def test_only_per_row_statistics_are_communicated(groups, dtype, smoothing):
    from validated_loss.distributed import METADATA_INTS_PER_RANK, bytes_per_row

    splits, rows = (700, 300), 24
    answers = groups(2).run("_task_bytes", splits, rows, dtype, smoothing)
    for rank, answer in enumerate(answers):
        expected = bytes_per_row(splits[rank], dtype, label_smoothing=smoothing)
        assert answer["forward"]["all_reduce"] == rows * expected.communicated, answer
        assert answer["forward"]["all_gather"] == 2 * METADATA_INTS_PER_RANK * 8, answer
        assert answer["backward"] == {"all_reduce": 0, "all_gather": 0, "largest": 0}, answer  # local backward
        assert expected.logits_shard * rows == answer["shard_bytes"]
        assert answer["forward"]["largest"] * 20 < answer["shard_bytes"], answer


def test_bytes_per_row():
    from validated_loss.distributed import bytes_per_row

    assert bytes_per_row(64128, torch.bfloat16) == (12, 128256)
    assert bytes_per_row(64128, torch.float32, label_smoothing=0.1) == (16, 256512)
    assert bytes_per_row(1000, torch.float64) == (24, 8000)
    assert bytes_per_row(1000, torch.float16).ratio == 12 / 2000


def test_distributed_bytes_benchmark_runs(capsys):
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
    import distributed_bytes  # noqa: E402  (by name, so the spawned ranks can import its worker)

    rows = distributed_bytes.main(["--vocab", "1001", "--dtypes", "bfloat16", "--smoothing", "0.1", "--rows", "8"])
    assert [(r["classes"], r["sent"], r["model"], r["bwd"]) for r in rows] == [(501, 16, 16, 0)]
    assert "| 1001 | 2 | bfloat16 | 0.1 | 501 | 1002 | 16 | 16 |" in capsys.readouterr().out


# =============================================================================
# Issue 15, item 17: autocast dtype, different targets on the ranks
# =============================================================================


def _task_autocast(rank, world, case):
    """The loss of this rank's slice of half/bfloat16 logits under CPU autocast, with its gradient."""
    from validated_loss.distributed import vocab_parallel_cross_entropy

    shard = _shard(case["logits"], case["splits"], rank).detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = vocab_parallel_cross_entropy(shard, case["target"], **case["kwargs"])
    loss.backward(case["grad_output"].to(loss.dtype))
    return {"loss": loss.detach(), "grad": shard.grad}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_autocast_gives_a_float32_loss_as_cross_entropy(groups, dtype, reduction):
    import validated_loss as vl

    case = _make_case((6, 10), (4, 6), seed=11, dtype=dtype, reduction=reduction)
    answers = groups(2).run("_task_autocast", case)
    x = case["logits"].detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = vl.cross_entropy(x, case["target"], **case["kwargs"])
        reference = F.cross_entropy(x, case["target"], **case["kwargs"])
    assert expected.dtype == reference.dtype == torch.float32
    (grad,) = torch.autograd.grad(expected, x, case["grad_output"].to(expected.dtype))
    for rank, answer in enumerate(answers):
        assert answer["loss"].dtype == torch.float32, f"rank {rank}"
        assert answer["grad"].dtype == dtype
        torch.testing.assert_close(answer["loss"], expected.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(answer["grad"], _shard(grad, case["splits"], rank), rtol=2e-2, atol=1e-3)


@pytest.mark.parametrize("change", ["values", "order"])
def test_different_targets_on_the_ranks_raise_rank_mismatch(groups, change):
    case = _make_case((6, 10), (4, 6), seed=12, ignored=0)
    other = case["target"].clone()
    if change == "values":
        other[4] = (other[4] + 1) % 10
    else:
        other = other.flip(0)
        assert not torch.equal(other, case["target"])
    case["per_rank"] = {1: {"target": other}}
    answers = _run_error_case(groups(2), case)
    for rank, answer in enumerate(answers):
        assert answer.get("raised") == "RankMismatchError", f"rank {rank}: {answer}"
        assert tuple(answer["attrs"]["ranks"]) == (1,)
        assert "different targets" in answer["message"] and "rank 1 differs from rank 0" in answer["message"]
