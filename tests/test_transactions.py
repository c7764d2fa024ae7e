"""Every error leaves the optimizer exactly as it was: ``step``, ``add_param_group``, ``load_state_dict``.

The property test at the end drives the public API in random orders with bad calls mixed in and checks,
after every raised error, that ``state_dict()`` is unchanged and that training afterwards equals training
without the bad call (a twin optimizer that never sees the bad calls).
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from helpers import assert_same_state, classification_batches, frozen_state, mlp
from probprec import PreconditionedAdam, PreconditionedMomentum, PreconditionedSGD, Preconditioner

warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
warnings.filterwarnings("ignore", message="start_estimate\\(\\) was called")

P, K = 4, 3
KW = dict(prior_iterations=P, num_observations=K, est_rank=2)


def good_step(model, opt, batch):
    x, y = batch
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward(create_graph=getattr(opt, "create_graph", False))
    opt.step()


def step_without_graph(model, opt, batch):
    x, y = batch
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def twins(make=lambda m: PreconditionedMomentum(m.parameters(), momentum=0.5, **KW)):
    a, b = mlp(), mlp()
    return (a, make(a)), (b, make(b))


def assert_twins_agree(pair_a, pair_b):
    (ma, oa), (mb, ob) = pair_a, pair_b
    for p, q in zip(ma.parameters(), mb.parameters(), strict=True):
        assert torch.equal(p, q)
    assert_same_state(oa.state_dict(), ob.state_dict())


# ------------------------------------------------------------------- step


@pytest.mark.parametrize("at", [0, 1, 2, P - 1, P, P + 1])  # prior (either half of a pair, final), posterior
def test_a_step_without_graph_changes_nothing(at):
    batches = classification_batches(P + K + 6, seed=1)
    (ma, oa), (mb, ob) = twins()
    for batch in batches[:at]:
        good_step(ma, oa, batch)
        good_step(mb, ob, batch)
    before = frozen_state(oa)
    with pytest.raises(RuntimeError, match="carry no autograd graph"):
        step_without_graph(ma, oa, batches[at])
    assert_same_state(before, oa.state_dict())
    for batch in batches[at:]:
        good_step(ma, oa, batch)
        good_step(mb, ob, batch)
    assert_twins_agree((ma, oa), (mb, ob))


@pytest.mark.parametrize("observe", ["next", "same"])
def test_a_failing_hessian_vector_product_changes_nothing(observe, monkeypatch):
    """Any error inside the Hessian-vector product (here: injected) leaves no trace."""
    import probprec.check_step
    import probprec.optimizer

    modules = (probprec.optimizer, probprec.check_step)  # estimation steps, check steps
    batches = classification_batches(P + K + 4, seed=2)
    make = lambda m: PreconditionedSGD(m.parameters(), observe=observe, **KW)  # noqa: E731
    (ma, oa), (mb, ob) = twins(make)
    real = probprec.optimizer.hessian_vector_product
    for t, batch in enumerate(batches):
        if oa.create_graph:
            for module in modules:
                monkeypatch.setattr(module, "hessian_vector_product", _raise_memory_error)
            before = frozen_state(oa)
            with pytest.raises(MemoryError):
                good_step(ma, oa, batch)
            assert_same_state(before, oa.state_dict())
            for module in modules:
                monkeypatch.setattr(module, "hessian_vector_product", real)
        good_step(ma, oa, batch)
        good_step(mb, ob, batch)
        assert_twins_agree((ma, oa), (mb, ob)), t


def _raise_memory_error(*args, **kwargs):
    raise MemoryError("injected")


def test_sparse_gradient_and_bad_closure_change_nothing():
    emb = nn.Embedding(10, 3, sparse=True)
    opt = Preconditioner(emb.parameters(), **KW)
    before = frozen_state(opt)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()
    assert_same_state(before, opt.state_dict())

    def closure():
        raise KeyError("user bug")

    with pytest.raises(KeyError):
        opt.step(closure)
    assert_same_state(before, opt.state_dict())


def test_a_group_lr_set_to_nan_is_refused_at_the_step():
    model = mlp()
    opt = PreconditionedSGD(model.parameters(), **KW)
    batches = classification_batches(P + K + 2)
    for batch in batches[: P + K]:
        good_step(model, opt, batch)
    opt.param_groups[0]["lr"] = math.nan
    before = frozen_state(opt)
    params = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['lr'\] must be a finite number >= 0"):
        good_step(model, opt, batches[-1])
    assert_same_state(before, opt.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params, strict=True))


# --------------------------------------------------------- add_param_group


def bad_groups(model, spare):
    return [
        ({"params": spare.parameters(), "lr": math.nan}, ValueError, "lr"),
        ({"params": spare.parameters(), "weight_decay": -1.0}, ValueError, "weight_decay"),
        ({"params": spare.parameters(), "momentum": -1.0}, ValueError, "momentum"),
        ({"params": model[0].parameters()}, ValueError, "more than one parameter group"),
        ({"params": [nn.Parameter(torch.ones(2, dtype=torch.complex64))]}, TypeError, "complex"),
        ({"params": spare.parameters(), "inner_weight_decay": math.inf}, ValueError, "inner_weight_decay"),
    ]


@pytest.mark.parametrize("index", range(6))
def test_a_rejected_param_group_leaves_the_optimizer_as_it_was(index):
    batches = classification_batches(P + K + 4, seed=3)
    (ma, oa), (mb, ob) = twins()
    spare = nn.Linear(3, 3)
    group, error, match = bad_groups(ma, spare)[index]
    for batch in batches[:2]:
        good_step(ma, oa, batch)
        good_step(mb, ob, batch)
    before = frozen_state(oa)
    with pytest.raises(error, match=match):
        oa.add_param_group(group)
    assert len(oa.param_groups) == 1
    assert_same_state(before, oa.state_dict())
    for batch in batches[2:]:
        good_step(ma, oa, batch)
        good_step(mb, ob, batch)
    assert_twins_agree((ma, oa), (mb, ob))


# --------------------------------------------------------- load_state_dict


def trained(make, model=None, steps=P + 2):
    model = model if model is not None else mlp()
    opt = make(model)
    for batch in classification_batches(steps, seed=5):
        good_step(model, opt, batch)
    return model, opt


@pytest.mark.parametrize(
    "other,match",
    [
        (lambda: trained(lambda m: PreconditionedMomentum(m.parameters(), momentum=0.5, **KW),
                         model=mlp(sizes=(6, 5, 3)))[1], r"shape"),
        (lambda: trained(lambda m: PreconditionedMomentum(m.parameters(), momentum=0.5, prior_iterations=P,
                                                          num_observations=K + 2, est_rank=2))[1],
         r"num_observations"),
        (lambda: trained(lambda m: PreconditionedAdam(m.parameters(), **KW))[1], r"optim_class"),
        (lambda: trained(lambda m: PreconditionedMomentum(m.parameters(), momentum=0.5, mode="thesis",
                                                          **KW))[1], r"mode"),
        (lambda: trained(lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9))[1],
         r"not a Preconditioner state dict"),
    ],
    ids=["other-shapes", "other-num_observations", "other-inner-class", "other-mode", "plain-sgd"],
)
def test_a_foreign_state_dict_is_refused_up_front(other, match):
    _, opt = trained(lambda m: PreconditionedMomentum(m.parameters(), momentum=0.5, **KW))
    foreign = other().state_dict()
    before = frozen_state(opt)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(foreign)
    assert_same_state(before, opt.state_dict())


def damaged_state_dicts(sd):
    """Copies of a valid state dict (saved in the posterior phase), each with one thing wrong."""
    out = []
    no_schedule = copy.deepcopy(sd)
    del no_schedule["probprec"]["schedule"]
    out.append(no_schedule)
    wrong_type = copy.deepcopy(sd)
    wrong_type["probprec"]["estimator"]["groups"] = "nonsense"
    out.append(wrong_type)
    short_direction = copy.deepcopy(sd)
    for buffers in short_direction["probprec"]["estimator"]["tensors"].values():
        buffers["directions"] = [v[:-1] for v in buffers["directions"]]
    out.append(short_direction)
    bad_inner = copy.deepcopy(sd)
    bad_inner["inner"]["param_groups"] = bad_inner["inner"]["param_groups"] * 2
    out.append(bad_inner)
    bad_phase = copy.deepcopy(sd)
    bad_phase["probprec"]["estimator"]["phase"] = "dancing"
    out.append(bad_phase)
    newer = copy.deepcopy(sd)
    newer["probprec"]["version"] = 99
    out.append(newer)
    return out


@pytest.mark.parametrize("index", range(6))
def test_a_damaged_state_dict_is_refused_up_front(index):
    _, opt = trained(lambda m: PreconditionedMomentum(m.parameters(), momentum=0.5, **KW), steps=P + 1)
    damaged = damaged_state_dicts(opt.state_dict())[index]
    before = frozen_state(opt)
    with pytest.raises(ValueError, match="state dict"):
        opt.load_state_dict(damaged)
    assert_same_state(before, opt.state_dict())


# ------------------------------------------------------------- property


OPERATIONS = st.lists(
    st.sampled_from([
        "step", "step", "step", "step", "start_estimate", "add_group", "nan_loss_step",
        "bad_step_no_graph", "bad_step_sparse", "bad_loss_scale", "bad_closure", "bad_group", "bad_load",
        "load_own", "bad_lr",
    ]),
    min_size=1, max_size=30,
)


class Twin:
    """A model and its optimizer; the third layer's parameters join through ``add_param_group``."""

    def __init__(self):
        self.model = mlp(sizes=(6, 8, 5, 3))
        m = self.model
        self.opt = PreconditionedMomentum([{"params": m[0].parameters()}, {"params": m[2].parameters()}],
                                          momentum=0.5, **KW)
        self.added = False

    def step(self, batch, poison=False):
        x, y = batch
        self.opt.zero_grad()
        loss = nn.functional.cross_entropy(self.model(x), y) * (math.nan if poison else 1.0)
        loss.backward(create_graph=self.opt.create_graph)
        self.opt.step()

    def add_group(self):
        if not self.added:
            self.opt.add_param_group({"params": self.model[4].parameters(), "lr": 0.5})
            self.added = True


def bad_call(twin: Twin, name: str, batch, foreign) -> None:
    """Perform the bad call ``name``; it must raise."""
    model, opt = twin.model, twin.opt
    x, y = batch
    opt.zero_grad()
    if name == "bad_step_no_graph":
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    elif name == "bad_step_sparse":
        nn.functional.cross_entropy(model(x), y).backward(create_graph=opt.create_graph)
        model[0].bias.grad = model[0].bias.grad.detach().to_sparse()
        opt.step()
    elif name == "bad_loss_scale":
        nn.functional.cross_entropy(model(x), y).backward(create_graph=opt.create_graph)
        opt.step(loss_scale=-1.0)
    elif name == "bad_closure":
        opt.step(lambda: 1 / 0)
    elif name == "bad_group":
        opt.add_param_group({"params": [nn.Parameter(torch.ones(3))], "lr": -1.0})
    elif name == "bad_load":
        opt.load_state_dict(foreign)
    elif name == "bad_lr":
        lr = opt.param_groups[0]["lr"]
        opt.param_groups[0]["lr"] = math.inf
        try:
            nn.functional.cross_entropy(model(x), y).backward(create_graph=opt.create_graph)
            opt.step()
        finally:
            opt.param_groups[0]["lr"] = lr


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(OPERATIONS)
def test_random_call_sequences_with_bad_calls(operations):
    batches = classification_batches(len(operations) + 1, seed=9)
    a, b = Twin(), Twin()
    foreign = trained(lambda m: PreconditionedSGD(m.parameters(), **KW), model=mlp(sizes=(6, 8, 5, 3)))[1]
    foreign = foreign.state_dict()
    for t, name in enumerate(operations):
        batch = batches[t]
        if name.startswith("bad_"):
            if name == "bad_step_no_graph" and not a.opt.create_graph:
                continue  # a step without graph is fine while optimizing
            before = frozen_state(a.opt)
            with pytest.raises((ValueError, RuntimeError, TypeError, ZeroDivisionError)):
                bad_call(a, name, batch, foreign)
            assert_same_state(before, a.opt.state_dict())
            continue
        for twin in (a, b):
            if name in ("step", "nan_loss_step"):
                twin.step(batch, poison=name == "nan_loss_step")
            elif name == "start_estimate":
                twin.opt.start_estimate()
            elif name == "add_group":
                twin.add_group()
            elif name == "load_own":
                twin.opt.load_state_dict(twin.opt.state_dict())
        assert_twins_agree((a.model, a.opt), (b.model, b.opt))
    for batch in batches[-1:] * (P + K):
        a.step(batch)
        b.step(batch)
    assert_twins_agree((a.model, a.opt), (b.model, b.opt))
