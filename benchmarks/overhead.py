"""Time per epoch of the Preconditioner variants relative to SGD, measured side by side.

Shapes of the thesis's Experiment 2 and of cifar10_3c3d, on synthetic data:

* ``mlp``: mnist_mlp (784-1000-500-100-10, ReLU), batch 128, 390 steps per epoch;
* ``cnn``: cifar10_3c3d (3 conv + 3 dense layers, TF 'same'/'valid' padding as in
  DeepOBS), batch 128, 312 steps per epoch. Its epochs are long on a CPU, so by
  default the whole estimation phase and a sample of optimization steps are timed
  and extrapolated to 312 steps (``--cnn-full`` times whole epochs).

Every epoch starts a fresh estimation cycle (``start_estimate()``: the thesis's schedule, the most
estimating a loop asks for; the default mode's adaptive restarts alone estimate less often) and uses the
training loop the library documents (``create_graph=opt.create_graph``). The default mode's check steps
(:mod:`probprec.safeguard`) are timed as what they are: with ``--cnn-sample`` the sampled updates are
extrapolated to the epoch with as many check steps as the safeguard's schedule has in it. The
candidates run in one process, interleaved ten steps at a time in a rotating
order, so that the machine's background load falls on all of them alike; each
repetition gives one ratio per candidate against the SGD epoch of the same
repetition, and the script prints the median and the quartiles of those ratios,
for wall-clock and for process CPU time. It also prints the optimizer's state in floats per
parameter element (besides the inner optimizer's) in each phase, and the extra passes: Hessian-vector
products per epoch (each one a backward pass through the loop's graph).

``--device cuda`` runs the models and data there (``auto``: cuda when available); ``--sync-debug``
then raises on any host synchronisation inside ``step()`` of a plain update (the steady state), through
``torch.cuda.set_sync_debug_mode("error")``.

    python benchmarks/overhead.py                 # both models, 5 repetitions
    python benchmarks/overhead.py --model mlp --repeats 7
    python benchmarks/overhead.py --device cuda --sync-debug
    python benchmarks/overhead.py --model mlp --warmup-epochs 2

The candidates ending in ``, documented loop`` train in the loop the README documents, with no
``start_estimate()``: their adaptive restarts decide when to estimate. ``OnlyAdaptiveSGD, documented loop`` is
the default a user runs (the recommended variant), held to the budgets of the default. By default the timed
epoch is the one after the first cycle, where the checks come most often; ``--warmup-epochs 2`` times a later
epoch, as most of a training run is (with ``--cnn-full`` on the cnn: the sampled extrapolation counts the
checks of a fresh cycle, an upper bound for a documented loop).

``--baseline SRC`` adds the same variants from another copy of the library (its ``src`` folder, e.g. a
``git worktree`` of an earlier commit), imported under another name, so that a change is measured
against the code before it in one process:

    git worktree add /tmp/before <commit> && python benchmarks/overhead.py --baseline /tmp/before/src
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from probprec import AdaptiveSGD, OnlyAdaptiveAdam, OnlyAdaptiveRMSprop, OnlyAdaptiveSGD, PreconditionedSGD
from probprec.config import MECHANISMS
from probprec.hvp import hessian_vector_product
from probprec.safeguard import Safeguard

DEFAULT_LOOP = "OnlyAdaptiveSGD, documented loop"
"""The recommended variant in the loop the README documents: the default a user runs."""
TARGETS = {
    "mlp": {"PreconditionedSGD": 1.15, "AdaptiveSGD": 1.08, "OnlyAdaptiveSGD": 1.06, DEFAULT_LOOP: 1.15},
    "cnn": {"PreconditionedSGD": 1.10, DEFAULT_LOOP: 1.10},
    "tiny": {"PreconditionedSGD": None, "AdaptiveSGD": None, "OnlyAdaptiveSGD": None, DEFAULT_LOOP: None},
}
# Reference rows, printed without a target: what the HVPs alone cost, and the preconditioner
# applied along every estimated direction of positive curvature (the paper's rule), its worst case.
# The default mode's mechanisms switched off: the default of the release before them, to show their cost; and
# the default in the loop the README documents (no start_estimate(): its adaptive restarts decide).
DOCUMENTED_LOOP = "PreconditionedSGD, documented loop"
METRIC_LOOPS = ["OnlyAdaptiveRMSprop, documented loop", "OnlyAdaptiveAdam, documented loop"]
REFERENCES = {
    "mlp": [DOCUMENTED_LOOP, *METRIC_LOOPS, "PreconditionedSGD, mechanisms off", "HVP floor (14 HVPs)",
            "HVP floor (10 HVPs)", "PreconditionedSGD, all applied"],
    "cnn": [DOCUMENTED_LOOP, *METRIC_LOOPS, "PreconditionedSGD, mechanisms off", "HVP floor (14 HVPs)",
            "PreconditionedSGD, all applied"],
    "tiny": [DOCUMENTED_LOOP, *METRIC_LOOPS, "PreconditionedSGD, mechanisms off", "HVP floor (14 HVPs)"],
}


def mnist_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 1000), nn.ReLU(), nn.Linear(1000, 500), nn.ReLU(),
        nn.Linear(500, 100), nn.ReLU(), nn.Linear(100, 10),
    )


def cifar_3c3d() -> nn.Module:
    # DeepOBS's cifar10_3c3d: conv 5x5 valid, pool 3/2 same, conv 3x3 valid, pool, conv 3x3 same, pool.
    return nn.Sequential(
        nn.Conv2d(3, 64, 5), nn.ReLU(), nn.ZeroPad2d((0, 1, 0, 1)), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 96, 3), nn.ReLU(), nn.ZeroPad2d((0, 1, 0, 1)), nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 128, 3, padding=1), nn.ReLU(), nn.ZeroPad2d((0, 1, 0, 1)), nn.MaxPool2d(3, 2),
        nn.Flatten(), nn.Linear(1152, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10),
    )


def digits_mlp() -> nn.Module:
    # The size of the contest's small problems (digits_mlp, the robustness family's MLPs): the Python work
    # of a step, not its arithmetic, decides the ratio there.
    return nn.Sequential(nn.Linear(64, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10))


MODELS = {"mlp": (mnist_mlp, (1, 28, 28), 390), "cnn": (cifar_3c3d, (3, 32, 32), 312), "tiny": (digits_mlp, (64,), 390)}

class HVPFloor(torch.optim.SGD):
    """The cost of the Hessian-vector products alone: SGD that spends the first ``hvps`` steps of
    each cycle computing one HVP along the gradient (the library's own HVP path) and nothing else."""

    def __init__(self, params, hvps: int):
        super().__init__(params, lr=0.01)
        self.hvps, self.count = hvps, 0

    @property
    def create_graph(self) -> bool:
        return self.count < self.hvps

    def start_estimate(self) -> None:
        self.count = 0

    def step(self, closure=None):
        if self.count < self.hvps:
            self.count += 1
            params = [p for g in self.param_groups for p in g["params"]]
            grads = [p.grad for p in params]
            hessian_vector_product(params, grads, [g.detach() for g in grads])
            for p in params:
                p.grad = p.grad.detach()
            return None
        return super().step(closure)


CANDIDATES: dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = {
    "SGD": lambda p: torch.optim.SGD(p, lr=0.01),
    "HVP floor (14 HVPs)": lambda p: HVPFloor(p, 14),
    "HVP floor (10 HVPs)": lambda p: HVPFloor(p, 10),
    "PreconditionedSGD, all applied": lambda p: PreconditionedSGD(p, lr=0.01, step_rule="paper"),
    "PreconditionedSGD": lambda p: PreconditionedSGD(p),
    "PreconditionedSGD, mechanisms off": lambda p: PreconditionedSGD(p, **dict.fromkeys(MECHANISMS, False)),
    "PreconditionedSGD, documented loop": lambda p: PreconditionedSGD(p),
    "AdaptiveSGD": lambda p: AdaptiveSGD(p),
    "OnlyAdaptiveSGD": lambda p: OnlyAdaptiveSGD(p),
    DEFAULT_LOOP: lambda p: OnlyAdaptiveSGD(p),
    "OnlyAdaptiveRMSprop, documented loop": lambda p: OnlyAdaptiveRMSprop(p),
    "OnlyAdaptiveAdam, documented loop": lambda p: OnlyAdaptiveAdam(p),
}


def add_baseline(src: str) -> list[str]:
    """Import the library in ``src`` as ``probprec_baseline``; add its variants as candidates; return their names."""
    folder = Path(tempfile.mkdtemp()) / "probprec_baseline"
    folder.mkdir()
    for module in Path(src, "probprec").glob("*.py"):  # the optimizer only (relative imports), not the harness
        shutil.copy(module, folder)
    sys.path.insert(0, str(folder.parent))
    baseline = importlib.import_module("probprec_baseline")
    names = []
    for variant in ("PreconditionedSGD", "AdaptiveSGD", "OnlyAdaptiveSGD"):
        name = f"{variant} (baseline)"
        cls = getattr(baseline, variant)
        CANDIDATES[name] = lambda p, cls=cls: cls(p)
        names.append(name)
    return names


def batches(shape, batch_size, count=20, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch_size, *shape, generator=gen).to(device),
             torch.randint(0, 10, (batch_size,), generator=gen).to(device)) for _ in range(count)]


def step_kind(opt) -> str:
    """``estimate`` (a step of the estimation phase), ``check`` (an update with a check) or ``plain``."""
    graph = getattr(opt, "create_graph", False)
    phase = getattr(opt, "phase", None)
    if phase is None:
        return "estimate" if graph else "plain"
    if phase != "optimize":
        return "estimate"
    return "check" if graph else "plain"


def checks_in(updates: int) -> int:
    """How many of ``updates`` updates after an estimate are check steps, if no check cuts (the schedule)."""
    schedule = Safeguard()
    count = 0
    for update in range(1, updates + 1):
        if schedule.check_due(update):
            schedule.observe(None, update)
            count += 1
    return count


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def train_steps(model, opt, data, steps):
    create = hasattr(opt, "create_graph")
    for t in range(steps):
        x, y = data[t % len(data)]
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward(create_graph=opt.create_graph if create else False)
        opt.step()


def documented(name: str) -> bool:
    """Whether candidate ``name`` runs in the documented loop (no ``start_estimate()``: adaptive restarts decide)."""
    return name.endswith(", documented loop")


def time_epochs(names, model_name, data, steps, sample, chunk=10, device="cpu", sync_debug=False, warmup_epochs=0):
    """Seconds (wall, CPU) of one epoch of ``steps`` steps for each candidate, measured interleaved.

    All candidates advance together, ``chunk`` steps at a time in turn, so that the
    machine's background load falls on all of them alike. With ``sample`` set, each
    candidate runs its estimation phase and ``sample`` updates, and the updates are
    extrapolated to the rest of the epoch (check steps and plain updates separately, with the
    safeguard's number of checks). Also returns the Hessian-vector products of the epoch.
    """
    make_model, _, _ = MODELS[model_name]
    runs = {}
    for name in names:
        torch.manual_seed(0)
        model = make_model().to(device)
        opt = CANDIDATES[name](list(model.parameters()))
        train_steps(model, opt, data, 20)  # warm-up: allocations, the first cycle (14 steps) and a few updates
        train_steps(model, opt, data, warmup_epochs * steps)  # later epochs: the adaptive schedule settled
        if hasattr(opt, "start_estimate") and not documented(name):
            opt.start_estimate()
        hvps = opt.get_log()["hvp_count"] if hasattr(opt, "get_log") else 0
        runs[name] = (model, opt, {kind: [0.0, 0.0, 0] for kind in ("estimate", "check", "plain")}, hvps)
    done = dict.fromkeys(names, 0)

    def finished(name):
        acc = runs[name][2]
        return done[name] >= steps if sample is None else acc["check"][2] + acc["plain"][2] >= sample

    while not all(finished(n) for n in names):
        for name in names:
            model, opt, acc, _ = runs[name]
            for _ in range(chunk):
                if finished(name):
                    break
                kind = step_kind(opt)
                x, y = data[done[name] % len(data)]
                synchronize(device)
                w0, c0 = time.perf_counter(), time.process_time()
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward(create_graph=kind != "plain")
                if sync_debug and kind == "plain":
                    torch.cuda.set_sync_debug_mode("error")
                try:
                    opt.step()
                finally:
                    if sync_debug:
                        torch.cuda.set_sync_debug_mode("default")
                synchronize(device)
                acc[kind][0] += time.perf_counter() - w0
                acc[kind][1] += time.process_time() - c0
                acc[kind][2] += 1
                done[name] += 1
    out = {}
    for name in names:
        _, opt, acc, hvps = runs[name]
        out[name] = (*_epoch_seconds(acc, steps, sample), applied(opt),
                     (opt.get_log()["hvp_count"] - hvps) if hasattr(opt, "get_log") else 0)
    return out


def _epoch_seconds(acc, steps, sample) -> tuple[float, float]:
    """(wall, CPU) seconds of the epoch from the per-kind sums, extrapolated when only a sample was timed."""
    if sample is None:
        return tuple(sum(acc[k][i] for k in acc) for i in (0, 1))  # type: ignore[return-value]
    updates = steps - acc["estimate"][2]
    checks = checks_in(updates) if acc["check"][2] else 0
    counts = {"estimate": acc["estimate"][2], "check": checks, "plain": updates - checks}
    return tuple(sum(acc[k][i] / max(acc[k][2], 1) * counts[k] for k in acc) for i in (0, 1))  # type: ignore


def applied(opt) -> str:
    """How many directions the preconditioner rescales, out of how many tensors."""
    if not hasattr(opt, "get_log"):
        return ""
    counts = opt.get_log()["preconditioned"]
    return f"{sum(counts)} directions in {sum(c > 0 for c in counts)}/{len(counts)} tensors"


def state_floats(model_name):
    """Floats per parameter element in the optimizer's own state, by phase (max over the phase)."""
    make_model, shape, _ = MODELS[model_name]
    torch.manual_seed(0)
    model = make_model()
    opt = PreconditionedSGD(model.parameters())
    n = sum(p.numel() for p in model.parameters())
    data = batches(shape, 32, count=4)
    worst: dict[str, float] = {}
    for _ in range(opt.config.prior_iterations + opt.config.num_observations + 3):
        train_steps(model, opt, data, 1)
        floats = opt.state_floats()
        phase = "estimating" if opt.phase != "optimize" else "optimizing"
        worst[phase] = max(worst.get(phase, 0.0), floats / n)
    return worst, opt


def quartiles(values):
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return q[0], statistics.median(values), q[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["mlp", "cnn", "tiny", "both"], default="both",
                        help="both: mlp and cnn; tiny: a 64-100-100-10 MLP, the contest's small problems")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None, help="steps per epoch (default: the problem's)")
    parser.add_argument("--cnn-sample", type=int, default=40, help="optimization steps timed on the cnn")
    parser.add_argument("--cnn-full", action="store_true", help="time whole cnn epochs")
    parser.add_argument("--warmup-epochs", type=int, default=0,
                        help="whole epochs every candidate trains before the timed one (default %(default)s: the "
                             "timed epoch follows the first cycle; 2: a later epoch, adaptive restarts settled)")
    parser.add_argument("--baseline", metavar="SRC", help="another copy's src folder, to compare against")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default %(default)s)")
    parser.add_argument("--sync-debug", action="store_true",
                        help="on cuda: raise on a host synchronisation in a plain update's step()")
    args = parser.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {device}: CUDA is not available here")
    if args.sync_debug and torch.device(device).type != "cuda":
        parser.error("--sync-debug needs --device cuda")
    baseline = add_baseline(args.baseline) if args.baseline else []
    warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
    where = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device} ({where})")
    for model_name in (["mlp", "cnn"] if args.model == "both" else [args.model]):
        _, shape, default_steps = MODELS[model_name]
        steps = args.steps or default_steps
        sample = None if model_name in ("mlp", "tiny") or args.cnn_full else args.cnn_sample
        variants = [b for b in baseline if b.split(" ")[0] in TARGETS[model_name]]
        names = ["SGD", *TARGETS[model_name], *variants, *REFERENCES[model_name]]
        data = batches(shape, 128, device=device)
        ratios: dict[str, dict[str, list[float]]] = {n: {"wall": [], "cpu": []} for n in names[1:]}
        sgd_times = []
        notes: dict[str, str] = {}
        passes: dict[str, int] = {}
        for rep in range(args.repeats):
            order = names[rep % len(names):] + names[:rep % len(names)]
            times = time_epochs(order, model_name, data, steps, sample, device=device, sync_debug=args.sync_debug,
                                warmup_epochs=args.warmup_epochs)
            sgd_times.append(times["SGD"][0])
            notes.update({name: times[name][2] for name in names})
            passes.update({name: times[name][3] for name in names})
            for name in names[1:]:
                ratios[name]["wall"].append(times[name][0] / times["SGD"][0])
                ratios[name]["cpu"].append(times[name][1] / times["SGD"][1])
            print(f"  [{model_name}] repetition {rep + 1}/{args.repeats}: " + ", ".join(
                f"{n} {times[n][0] / times['SGD'][0]:.3f}" for n in names[1:]), flush=True)
        how = "whole epochs" if sample is None else f"estimation + {sample} sampled steps, extrapolated"
        how += f", after {args.warmup_epochs} warm-up epochs" if args.warmup_epochs else ""
        print(f"\n{model_name}: {steps} steps per epoch, batch 128, {args.repeats} repetitions ({how}); "
              f"SGD epoch median {statistics.median(sgd_times):.1f} s wall")
        print(f"  {'optimizer':<36}{'wall ratio (q1, median, q3)':>28}{'CPU ratio (q1, median, q3)':>32}"
              f"{'target':>9}{'HVPs':>6}")
        for name in names[1:]:
            w, c = quartiles(ratios[name]["wall"]), quartiles(ratios[name]["cpu"])
            target = TARGETS[model_name].get(name)
            print(f"  {name:<36}{w[0]:>8.3f}{w[1]:>10.3f}{w[2]:>10.3f}{c[0]:>12.3f}{c[1]:>10.3f}{c[2]:>10.3f}"
                  + (f"{target:>9.2f}" if target else f"{'-':>9}") + f"{passes[name]:>6}"
                  + (f"   ({notes[name]})" if notes[name] else ""))
        worst, opt = state_floats(model_name)
        k, K = opt.config.est_rank, opt.config.num_observations
        print("  optimizer state, floats per parameter (besides the inner optimizer's): "
              + ", ".join(f"{phase} {value:.2f}" for phase, value in worst.items())
              + f" (bounds: {2 * K + k + 4} and {k + 2})\n")


if __name__ == "__main__":
    main()
