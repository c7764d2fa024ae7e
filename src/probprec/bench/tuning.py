"""The tuning protocol of DeepOBS and the thesis, as one command.

1. Every setting of the sweep (grid points and random-search draws) runs with one
   seed (the sweep's first).
2. Per problem and optimizer, the setting with the best *validation* metric is
   chosen (:func:`probprec.bench.analysis.select_settings`: validation accuracy
   where the problem has one, else validation loss; diverged or failed runs rank
   last). The test set plays no part in the choice.
3. The chosen setting runs again with the rerun seeds (42-51 by default); the seed
   already run is found finished and not repeated. An optimizer with one setting
   (a learning-rate-free one at its defaults) has nothing to choose: it runs every
   seed even if the first diverged or collapsed. With several settings of which
   none finished, nothing is rerun.

``tuning.json`` and ``tuning.md`` in the output folder name the chosen settings, the
validation score of every candidate, and where the rerun results are. Every step
skips what is finished, so the same command resumes an interrupted tuning.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .executor import LOCAL
from .orchestration import Echo, prepare_runs, run_processes, run_runs
from .outcomes import SweepSummary, folder_of
from .results import TUNING_RECORD, existing_results, write_json_atomic, write_text_atomic
from .slurm_executor import SlurmOptions
from .sweeps import SweepRun, SweepSpec
from .wording import counted

__all__ = ["DEFAULT_SEEDS", "TuningResult", "tune"]

DEFAULT_SEEDS = tuple(range(42, 52))


@dataclass
class TuningResult:
    """What :func:`tune` did."""

    output_dir: Path
    search: SweepSummary
    rerun: SweepSummary | None = None
    choices: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """130 if a step was interrupted, 1 if a run failed, else 0."""
        codes = [self.search.exit_code] + ([self.rerun.exit_code] if self.rerun else [])
        return 130 if 130 in codes else max(codes)


def _check_seeds(seeds: Iterable[int]) -> list[int]:
    seeds = list(seeds)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(f"seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds lists a seed twice: {seeds!r}")
    return seeds


def _latest_result(sweep_run: SweepRun) -> Path | None:
    """The newest result file of a run (any status), or None."""
    found = existing_results(folder_of(sweep_run.config), sweep_run.config.seed)
    return found[-1][0] if found else None


def _plain(value: Any) -> Any:
    """JSON-able copy of a table cell (numpy scalars become Python numbers, NaN stays NaN)."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _choose(runs: list[SweepRun], metric: str | None, mode: str, notes: list[str]) -> list[dict[str, Any]]:
    """Step 2: per problem x optimizer, the chosen setting's run and every candidate with its score."""
    from .analysis import load_results, select_settings

    by_path = {}
    for sweep_run in runs:
        path = _latest_result(sweep_run)
        if path is None:
            notes.append(f"{sweep_run.config.problem} {sweep_run.label} {folder_of(sweep_run.config).name}: no "
                         "result file (the run could not start), not a candidate")
        else:
            by_path[str(path)] = sweep_run
    if not by_path:
        return []
    loaded = load_results(list(by_path))
    chosen, candidates = select_settings(loaded, metric=metric, mode=mode, return_candidates=True)
    notes += list(chosen.attrs.get("notes", []))
    choices = []
    for _, row in chosen.iterrows():
        group = loaded.runs[(loaded.runs["problem"] == row["problem"]) & (loaded.runs["optimizer"] == row["optimizer"])]
        picked = group[group["setting"] == row["setting"]]
        sweep_run = by_path[str(picked["path"].iloc[0])]
        rows = candidates[(candidates["problem"] == row["problem"]) & (candidates["optimizer"] == row["optimizer"])]
        listed = []
        for _, candidate in rows.sort_values("rank").iterrows():
            members = group[group["setting"] == candidate["setting"]]
            listed.append({"setting": candidate["setting"], "hyperparams": _plain(candidate["hyperparams"]),
                           "batch_size": _plain(candidate["batch_size"]), "num_epochs": _plain(candidate["num_epochs"]),
                           "score": _plain(candidate["score"]), "rank": _plain(candidate["rank"]),
                           "status": ", ".join(sorted(set(members["status"]))),
                           "results": sorted(members["path"])})
        choices.append({"problem": row["problem"], "optimizer": row["optimizer"], "label": sweep_run.label,
                        "setting": row["setting"], "hyperparams": _plain(row["hyperparams"]),
                        "batch_size": _plain(row["batch_size"]), "num_epochs": _plain(row["num_epochs"]),
                        "metric": row["metric"], "score": _plain(row["score"]),
                        "folder": str(folder_of(sweep_run.config)), "candidates": listed, "_run": sweep_run})
    return choices


def _rerun_runs(choices: list[dict[str, Any]], seeds: list[int], notes: list[str]) -> list[SweepRun]:
    runs = []
    for choice in choices:
        failed = choice["score"] is None or (isinstance(choice["score"], float) and math.isnan(choice["score"]))
        if failed and len(choice["candidates"]) > 1:
            notes.append(f"{choice['problem']} {choice['optimizer']}: no setting finished without diverging or "
                         "failing; nothing rerun")
            choice["rerun"] = None
            continue
        chosen: SweepRun = choice["_run"]
        runs += [SweepRun(chosen.label, replace(chosen.config, seed=seed)) for seed in seeds]
    return runs


def _record_reruns(choices: list[dict[str, Any]], seeds: list[int]) -> None:
    for choice in choices:
        if choice.get("rerun", True) is None:
            continue
        chosen: SweepRun = choice["_run"]
        files: list[str] = []
        statuses: Counter[str] = Counter()
        for seed in seeds:
            path = _latest_result(SweepRun(chosen.label, replace(chosen.config, seed=seed)))
            if path is not None:
                files.append(str(path))
                statuses[_status_of(path)] += 1
        choice["rerun"] = {"seeds": seeds, "folder": choice["folder"], "results": files, "statuses": dict(statuses)}


def _status_of(path: Path) -> str:
    import json

    try:
        return str(json.loads(path.read_text()).get("status", "?"))
    except (OSError, ValueError):
        return "unreadable"


def _cell(text: str) -> str:
    """Text for a Markdown table cell (a ``|`` would end the cell)."""
    return text.replace("|", "\\|")


def _score(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6g}"


def _markdown(spec: SweepSpec, result: TuningResult, metric: str | None, mode: str, first_seed: int,
              seeds: list[int]) -> str:
    lines = [f"# Tuning: {spec.name} [{spec.scale}]", "",
             f"Protocol: every setting with seed {first_seed}; per problem and optimizer the setting with the best "
             f"validation metric ({metric or 'validation accuracy where the problem has one, else validation loss'}, "
             f"mode `{mode}`; diverged or failed runs rank last); that setting rerun with "
             f"{counted(len(seeds), 'seed')} ({', '.join(map(str, seeds))}).", ""]
    for choice in result.choices:
        rerun = choice.get("rerun")
        lines += [f"## {choice['problem']} / {choice['optimizer']}", "",
                  f"Chosen: `{choice['setting']}`, {choice['metric']} = {_score(choice['score'])}", ""]
        if rerun:
            statuses = ", ".join(f"{n} {s}" for s, n in sorted(rerun["statuses"].items()))
            lines += [f"Rerun: {len(rerun['results'])} of {counted(len(rerun['seeds']), 'seed')} ({statuses}) in "
                      f"`{rerun['folder']}`", ""]
        lines += [f"| rank | setting | {choice['metric']} | status |", "| ---: | --- | ---: | --- |"]
        lines += [f"| {c['rank']} | `{_cell(c['setting'])}` | {_score(c['score'])} | {c['status']} |"
                  for c in choice["candidates"]]
        lines.append("")
    if result.notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in result.notes] + [""]
    return "\n".join(lines)


def _write(spec: SweepSpec, result: TuningResult, metric: str | None, mode: str, first_seed: int,
           seeds: list[int]) -> None:
    choices = [{k: v for k, v in c.items() if k != "_run"} for c in result.choices]
    write_json_atomic(result.output_dir / TUNING_RECORD, {
        "sweep": spec.name, "scale": spec.scale, "file": str(spec.path) if spec.path else None,
        "metric": metric, "mode": mode, "candidate_seed": first_seed, "rerun_seeds": seeds, "choices": choices,
        "notes": result.notes})
    write_text_atomic(result.output_dir / "tuning.md", _markdown(spec, result, metric, mode, first_seed, seeds))


def tune(spec: SweepSpec, output_dir: str | Path, *, metric: str | None = None, mode: str = "final",
         seeds: Iterable[int] = DEFAULT_SEEDS, executor: str = LOCAL, workers: int | None = None,
         data_dir: str | Path = "data", device: str = "cpu", slurm: SlurmOptions | None = None,
         echo: Echo = print) -> TuningResult:
    """Search with one seed, choose on validation, rerun the choice with ``seeds``; see the module docstring.

    Args:
        spec: a loaded sweep; its first seed is the search seed.
        output_dir: where results, ``tuning.json`` and ``tuning.md`` go.
        metric: ``valid_loss`` or ``valid_accuracy``; None: accuracy where the problem has one, else loss.
        mode: ``final`` (the metric after the last epoch) or ``best`` (the best epoch).
        seeds: the seeds of the rerun (default 42-51).
        executor: ``local`` or ``slurm``.
        workers: local processes (see :func:`probprec.bench.orchestration.run_sweep`).
        data_dir: where data sets are (unless the sweep generates its data).
        device: ``cpu``, ``cuda`` or ``auto``.
        slurm: submission options for ``executor="slurm"``.
        echo: where progress lines go.

    Returns:
        The summaries of both run steps and the choices.

    Raises:
        ConfigError: bad input, before anything runs.
    """
    seeds = _check_seeds(seeds)
    if mode not in ("final", "best"):
        raise ConfigError(f"mode must be final or best, got {mode!r}")
    if metric is not None and metric not in ("valid_loss", "valid_accuracy"):
        raise ConfigError(f"metric must be valid_loss or valid_accuracy (tuning selects on validation), got "
                          f"{metric!r}")
    if slurm is not None and not slurm.wait:
        raise ConfigError("tuning waits for its runs between the steps; leave out --no-wait")
    output_dir = Path(output_dir)
    first = spec.seeds[0]
    runs = prepare_runs(replace(spec, seeds=[first]), output_dir, data_dir, device,
                        processes=run_processes(executor, slurm))
    echo(f"step 1 of 3: every setting with seed {first}")
    search = run_runs(runs, output_dir, executor=executor, workers=workers, slurm=slurm, echo=echo)
    result = TuningResult(output_dir, search)
    if search.exit_code == 130:
        return result
    echo("step 2 of 3: choosing on validation")
    result.choices = _choose(runs, metric, mode, result.notes)
    for choice in result.choices:
        echo(f"  {choice['problem']} {choice['optimizer']}: {choice['setting']} ({choice['metric']} "
             f"{_score(choice['score'])})")
    reruns = _rerun_runs(result.choices, seeds, result.notes)
    echo(f"step 3 of 3: the chosen settings with {'seed' if len(seeds) == 1 else 'seeds'} {', '.join(map(str, seeds))}")
    result.rerun = run_runs(reruns, output_dir, executor=executor, workers=workers, slurm=slurm, echo=echo)
    _record_reruns(result.choices, seeds)
    _write(spec, result, metric, mode, first, seeds)
    echo(f"tuning: {output_dir / 'tuning.md'}")
    return result
