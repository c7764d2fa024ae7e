"""Issue 10, item 1: the learning-rate-free and curvature peers as named optimizers of the harness.

Each peer trains one epoch of digits_mlp (34 minibatches) through the runner, its loss falls, and its package's
version is in the result's environment. Schedule-Free is evaluated in its eval mode (and that changes the
numbers); the curvature peers get ``create_graph`` exactly on their Hessian steps; a missing package is one line
naming the extra; peers run through ``probprec run`` and in a sweep.
"""

from __future__ import annotations

import inspect
import math
import re
import sys
from importlib import metadata

import pytest
import torch

from probprec.bench import runner as runner_module
from probprec.bench.cli import main
from probprec.bench.optimizer_protocol import has_modes, needs_graph
from probprec.bench.optimizers import OPTIMIZERS, get_optimizer
from probprec.bench.orchestration import run_sweep
from probprec.bench.peers import INSTALL_HINT, PEERS, PeerMissingError, peer_class
from probprec.bench.runner import RunConfig, run
from probprec.bench.sweeps import load_sweep

BY_NAME = {peer.name: peer for peer in PEERS}


def one_epoch(tmp_path, name: str, **options) -> RunConfig:
    return RunConfig("digits_mlp", name, seed=42, epochs=1, output_dir=str(tmp_path), progress=False, **options)


def test_every_peer_is_a_named_optimizer_at_its_packages_defaults():
    for peer in PEERS:
        spec = OPTIMIZERS[peer.name]
        assert not spec.second_order and spec.hyperparameters("digits_mlp") == {}
        built = spec.build([torch.nn.Parameter(torch.zeros(3))], {})
        cls = peer_class(peer)
        assert type(built) is cls
        published = inspect.signature(cls.__init__).parameters["lr"].default
        assert built.param_groups[0]["lr"] == published, f"{peer.name}: the package's own default learning rate"


@pytest.mark.parametrize("name", [peer.name for peer in PEERS])
def test_each_peer_trains_an_epoch_and_records_its_version(tmp_path, name):
    result = run(one_epoch(tmp_path, name))
    record = result.record
    losses = record["train_losses"] + record["test_losses"]
    assert result.status == "completed", record["status_reason"]
    assert all(math.isfinite(v) for v in losses)
    assert record["train_losses"][1] < record["train_losses"][0], "it trains"
    package = BY_NAME[name].package
    assert record["metadata"]["environment"]["packages"][package] == metadata.version(package)


def test_schedule_free_is_evaluated_in_its_eval_mode_and_that_matters(tmp_path, monkeypatch):
    optimizers, modes = [], []
    evaluate, switch = runner_module._Evaluator.__call__, runner_module.evaluation_mode

    def evaluation_mode(optimizer):
        switch(optimizer)
        optimizers.append(optimizer)

    def spy(self, model, dataset):
        modes.append(optimizers[-1].param_groups[0]["train_mode"])
        return evaluate(self, model, dataset)

    monkeypatch.setattr(runner_module, "evaluation_mode", evaluation_mode)
    monkeypatch.setattr(runner_module._Evaluator, "__call__", spy)
    in_eval_mode = run(one_epoch(tmp_path / "modes", "SGDScheduleFree")).record
    assert modes == [False] * 6, "every evaluation (3 splits, before and after the epoch) in eval mode"

    monkeypatch.setattr(runner_module, "evaluation_mode", lambda optimizer: None)
    monkeypatch.setattr(runner_module._Evaluator, "__call__", evaluate)
    at_training_point = run(one_epoch(tmp_path / "no_modes", "SGDScheduleFree")).record
    assert in_eval_mode["train_losses"][0] == at_training_point["train_losses"][0]
    gap = abs(in_eval_mode["test_losses"][-1] - at_training_point["test_losses"][-1])
    assert gap > 0.01, "the averaged parameters (eval mode) are not the ones gradients are taken at"


def test_only_schedule_free_has_modes():
    params = [torch.nn.Parameter(torch.zeros(2))]
    with_modes = {name for name in BY_NAME if has_modes(get_optimizer(name).build(params, {}))}
    assert with_modes == {"SGDScheduleFree", "AdamWScheduleFree"}


@pytest.mark.parametrize(("name", "period"), [("SophiaH", 10), ("AdaHessian", 1)])
def test_curvature_peers_get_the_graph_on_their_hessian_steps(tmp_path, monkeypatch, name, period):
    asked = []

    def counting(optimizer):
        asked.append(needs_graph(optimizer))
        return asked[-1]

    monkeypatch.setattr(runner_module, "needs_graph", counting)
    result = run(one_epoch(tmp_path, name, batch_size=64))  # 17 steps
    assert result.status == "completed", result.record["status_reason"]
    assert [i for i, graph in enumerate(asked) if graph] == list(range(0, 17, period))


def test_other_optimizers_never_get_the_graph():
    params = [torch.nn.Parameter(torch.zeros(2))]
    for name in ("SGD", "Adam", "Prodigy", "DoG", "SGDScheduleFree"):
        assert not needs_graph(get_optimizer(name).build(params, {"lr": 0.1} if name in ("SGD", "Adam") else {}))


def test_a_missing_peer_package_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "prodigyopt", None)  # import prodigyopt now raises ImportError
    code = main(["run", "digits_mlp", "--optimizer", "Prodigy", "--epochs", "1", "--output-dir", str(tmp_path),
                 "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "optimizer Prodigy needs the package prodigyopt" in err and INSTALL_HINT in err
    assert not list(tmp_path.rglob("*.json")), "nothing written"
    sweep = tmp_path / "sweep.toml"
    sweep.write_text('[smoke]\nproblems = ["digits_mlp"]\nseeds = [42]\noptimizers = [{ name = "Prodigy" }]\n')
    with pytest.raises(PeerMissingError, match=re.escape(INSTALL_HINT)):
        load_sweep(sweep, "smoke")  # a sweep checks every optimizer before anything runs


def test_a_peer_runs_through_probprec_run(tmp_path, capsys):
    code = main(["run", "digits_mlp", "--optimizer", "DoG", "--epochs", "1", "--output-dir", str(tmp_path),
                 "--no-progress"])
    assert code == 0
    (path,) = tmp_path.rglob("*.json")
    assert "/DoG/" in path.as_posix()


def test_peers_run_in_a_sweep(tmp_path):
    sweep = tmp_path / "peers.toml"
    sweep.write_text('[smoke]\nproblems = ["digits_mlp"]\nseeds = [42]\nepochs = 1\nbatch_size = 64\n'
                     'optimizers = [{ name = "AdamWScheduleFree" }, { name = "SophiaH" }, { name = "Prodigy" }]\n')
    summary = run_sweep(load_sweep(sweep, "smoke"), tmp_path / "runs", echo=lambda line: None)
    assert summary.counts == {"completed": 3}
    assert summary.exit_code == 0
