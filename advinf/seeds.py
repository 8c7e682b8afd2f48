"""Several seeds of one recipe from one command: ``advinf run RECIPE --seeds 0-9 [--jobs N]``.

Each seed is an ordinary run of the recipe with ``seed = K`` into ``OUT/seed_K``, so its weights, metrics and
evaluation are bit-identical to ``advinf run RECIPE --set seed=K`` with the same ``train.threads``. With
``jobs = 1`` the seeds run one after another in this process; with ``jobs = N`` in N worker processes, each taking
the next seed when it finishes one. Then ``OUT/summary.json``: every evaluator metric's mean and standard deviation
over the seeds, with each seed's value and the wall time. SIGINT/SIGTERM end the group as they end a run: the
seeds in training write a checkpoint and stop, no further seed starts (the workers get the signal from this
process, once per signal it receives: a second SIGINT aborts, as in a single run). A worker killed outright (the
system reclaiming memory, say) takes the seed in hand with it: the other workers go on with the rest, the summary
lists that seed under ``lost`` (and any seed no worker was left to start under ``not_started``), and the command
prints the table, then fails (exit status 2), saying for each such seed how to get it back.

Why not stacked networks under ``torch.func.vmap``: on CPU ``vmap(F.linear)`` does not reproduce ``F.linear`` of
each slice bit for bit (the toy's 2-400-400-2 MLP at batch 100: gradients off by up to 1e-5), although ``bmm`` and
``baddbmm`` themselves equal ``mm`` and ``F.linear`` slice by slice;
and a game's noise drawn inside ``vmap`` does not come from each seed's own generator in the order a single run
draws it. Separate runs are the way to keep every seed exactly reproducible on its own (docs/recipes.md). On a CPU
they lose little: ``python -m advinf_benchmarks.stacking`` times the best case of stacking (the toy's step written
for ten seeds at once, not exact), 1.12-1.20x per seed-step with two threads and 0.95-0.99x with one, as much as
two one-thread jobs gain.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing import connection as mp_connection
from pathlib import Path
from typing import Any

import torch

from advinf import checkpoint as ckpt
from advinf.atomic import write_json
from advinf.errors import UserError
from advinf.plots import flatten
from advinf.plugins import PluginHost, default_host
from advinf.recipe import clip, load_recipe, parse_override
from advinf.rundir import CHECKPOINTS_DIR, check_target, default_run_dir, is_run_dir
from advinf.search import Draw, check_draws, drawn_overrides, drawn_values, parse_draw
from advinf.session import run_recipe
from advinf.values import toml_value

#: The group's summary, beside the seeds' run directories.
SUMMARY_FILE = "summary.json"
#: The most seeds one group takes (each is a full run with its own directory).
MAX_SEEDS = 10_000
_SEEDS_RE = re.compile(r"^\d+(-\d+)?$")


def parse_seeds(text: str) -> list[int]:
    """``0-9``, ``0,3,7`` or ``0-2,10``: the seeds, in order, each once (seeds below 2**32, at most
    ``MAX_SEEDS`` of them)."""
    seeds: dict[int, None] = {}  # ordered, each once
    for part in text.replace(" ", "").split(","):
        if not _SEEDS_RE.match(part):
            raise UserError(f"--seeds {text!r}: give seeds as 0-9, 0,3,7 or 0-2,10 (non-negative integers)")
        lo, _, hi = part.partition("-")
        first, last = int(lo), int(hi or lo)
        if last < first:
            raise UserError(f"--seeds {text!r}: the range {part} runs backwards")
        if last >= 2**32:
            raise UserError(f"--seeds {text!r}: seeds go up to {2**32 - 1} (got {last})")
        if last - first + 1 > MAX_SEEDS:  # checked before the range is listed
            raise UserError(f"--seeds {text!r}: more than {MAX_SEEDS:,} seeds in one group; split it")
        seeds.update(dict.fromkeys(range(first, last + 1)))
        if len(seeds) > MAX_SEEDS:
            raise UserError(f"--seeds {text!r}: more than {MAX_SEEDS:,} seeds in one group; split it")
    return list(seeds)


@dataclass
class SeedResult:
    """One seed's run: where, how long, its final evaluation (empty if it stopped early)."""

    seed: int
    run_dir: Path
    steps: int
    seconds: float
    eval: dict[str, Any] = field(default_factory=dict)
    stopped: str | None = None


@dataclass
class SeedsOutcome:
    """The group: its directory, each seed's result, the summary (also in ``OUT/summary.json``)."""

    out: Path
    results: list[SeedResult]
    summary: dict[str, Any]
    stopped: str | None = None  # "SIGINT" or "SIGTERM" when a signal ended the group early
    lost: list[int] = field(default_factory=list)  # started, but their worker was killed outright
    not_started: list[int] = field(default_factory=list)  # a signal ended the group, or no worker was left
    killed: list[int] = field(default_factory=list)  # the exit codes of workers that ended without a word

    @property
    def failed(self) -> bool:
        """Whether seeds were lost, or left unstarted with no signal asking for it: the command then fails."""
        return bool(self.lost) or (bool(self.not_started) and self.stopped is None)


def run_seeds(recipe: str | Path, seeds: Sequence[int], *, out: str | Path | None = None, jobs: int = 1,
              overrides: Sequence[str] = (), stop_after: int | None = None, host: PluginHost | None = None,
              plugins: Sequence[str | Path] = (), log: Callable[[str], None] | None = None,
              draws: Sequence[str | Draw] = ()) -> SeedsOutcome:
    """Train ``recipe`` once per seed into ``out/seed_K`` (``jobs`` at a time, in worker processes when more
    than one) and summarise every evaluator metric over the seeds into ``out/summary.json``. Seeds whose worker
    was killed outright come back in ``lost`` (``failed`` says whether the group failed; ``lost_message`` says
    what to do), and in the summary. ``draws`` (``--draw KEY=VALUE`` with distributions, :mod:`advinf.search`)
    give each seed its own values of those keys, drawn from its seed: a random search, as the paper's toy
    experiment (the summary lists what each seed drew)."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    if not seeds:
        raise UserError("--seeds names no seed")
    if jobs < 1:
        raise UserError(f"--jobs {jobs}: give at least 1")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("--seeds cannot run under torchrun: launch one data-parallel run per seed instead")
    for item in overrides:
        with contextlib.suppress(ValueError):  # a malformed one is load_recipe's to report
            if parse_override(item)[0] == ["seed"]:
                raise UserError(f"--set {item.strip()} with --seeds: each seed's run sets `seed` itself; give the "
                                "seeds as --seeds (e.g. --seeds 3, or 3-5)")
    chosen = [d if isinstance(d, Draw) else parse_draw(d) for d in draws]
    check_draws(chosen, overrides)
    host = host or default_host()
    for plugin in plugins:
        host.load_local(str(plugin))
    rec = load_recipe(recipe, overrides, host=host)  # refuses a bad recipe once, before any seed starts
    for s in seeds if chosen else ():  # every seed's drawn values, before any seed starts
        _check_drawn(recipe, overrides, chosen, s, host)
    out_dir = Path(out) if out is not None else default_run_dir(f"{rec.spec.name}-seeds")
    if is_run_dir(out_dir):
        raise UserError(f"--out {out_dir} is a run directory; give a new folder for the group (it will hold one "
                        f"run directory per seed and the summary)")
    for s in seeds:
        if is_run_dir(out_dir / f"seed_{s}"):  # a group here already: --resume does not go with --seeds
            raise UserError(f"{out_dir / f'seed_{s}'} already holds a run (of an earlier group of seeds); give the "
                            f"group a new --out, or continue that seed on its own: advinf run --resume "
                            f"{shlex.quote(str(out_dir / f'seed_{s}'))}")
        check_target(out_dir / f"seed_{s}", resume=False)
    if (out_dir / SUMMARY_FILE).exists():  # an earlier group's summary: not overwritten
        raise UserError(f"{out_dir / SUMMARY_FILE} exists (an earlier group of seeds wrote it); give a new --out, "
                        f"or move that file away first (advinf compare {out_dir}/seed_* summarises all the seeds "
                        f"there)")
    start = time.perf_counter()
    tasks = [(str(recipe), s, str(out_dir / f"seed_{s}"), [*overrides, *drawn_overrides(chosen, s)], stop_after,
              [str(p) for p in plugins], jobs > 1) for s in seeds]
    results: list[SeedResult] = []
    stopped: str | None = None
    killed: list[int] = []
    started: set[int] = set()
    if jobs == 1:
        for task in tasks:
            started.add(task[1])
            results.append(_run_one(*task, host=host))
            log(_line(results[-1]))
            if results[-1].stopped in _SIGNALS:
                stopped = results[-1].stopped
                break
    else:
        stopped, killed = _in_workers(tasks, min(jobs, len(tasks)), results, started, log)
    results.sort(key=lambda r: seeds.index(r.seed))
    summary = summarise(results, time.perf_counter() - start, jobs)
    if chosen:
        summary["draws"] = [d.text for d in chosen]
        summary["drawn"] = {str(s): drawn_values(chosen, s) for s in seeds}
    finished = {r.seed for r in results}
    lost = [s for s in seeds if s in started and s not in finished]
    not_started = [s for s in seeds if s not in started]
    if lost:
        summary["lost"] = lost
    if not_started:
        summary["not_started"] = not_started
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / SUMMARY_FILE, summary)
    return SeedsOutcome(out_dir, results, summary, stopped, lost, not_started, killed)


def _check_drawn(recipe: str | Path, overrides: Sequence[str], draws: Sequence[Draw], seed: int,
                 host: PluginHost) -> None:
    """Seed ``seed``'s recipe with its drawn values validates, or a UserError names the seed and the draw."""
    drawn = drawn_overrides(draws, seed)
    try:
        load_recipe(recipe, [*overrides, *drawn, f"seed={seed}"], host=host)
    except UserError as exc:
        raise UserError(f"seed {seed} draws {clip(', '.join(drawn), 300)}, which the recipe refuses (check the "
                        f"--draw keys, types and ranges):\n{exc}") from None


def lost_message(outcome: SeedsOutcome, recipe: str | Path) -> str:
    """What happened to the seeds without a result, and the command that gets each one back."""
    def ending(code: int) -> str:
        if code >= 0:
            return f"exit status {code}"
        try:
            return signal.Signals(-code).name
        except ValueError:  # a real-time signal has no name
            return f"signal {-code}"

    ends = [ending(c) for c in sorted(set(outcome.killed))]
    what = ("a worker process ended without a result" if not ends else
            f"a worker process ended ({ends[0]})" if len(ends) == 1 else
            f"worker processes ended ({', '.join(ends)})")
    if "SIGKILL" in ends:
        what += ": SIGKILL is often the system taking memory back"
    missing = outcome.lost + (outcome.not_started if outcome.stopped is None else [])

    total = len(outcome.results) + len(outcome.lost) + len(outcome.not_started)
    lines = [f"{len(missing)} of {total} seeds have no result, as {what}. The others are summarised in "
             f"{outcome.out / SUMMARY_FILE}"]
    for s in outcome.lost:
        run = outcome.out / f"seed_{s}"
        if ckpt.list_checkpoints(run / CHECKPOINTS_DIR):  # a complete one: what --resume needs
            lines.append(f"  seed {s}: continue it: advinf run --resume {shlex.quote(str(run))}")
        else:
            again = f"delete {run} and run it again" if run.exists() else "run it again"
            lines.append(f"  seed {s}: no checkpoint yet: {again}: {seed_command(outcome, recipe, s)}")
    if outcome.stopped is None:
        lines += [f"  seed {s}: never started: {seed_command(outcome, recipe, s)}" for s in outcome.not_started]
    lines.append("(pass the same --set overrides as this command; with fewer --jobs if memory ran out)")
    return "\n".join(lines)


def seed_command(outcome: SeedsOutcome, recipe: str | Path, seed: int) -> str:
    """The command that trains seed ``seed`` of the group on its own, as the group would have: its seed, the
    values it drew (``--draw``) and its folder, quoted for the shell (the group's --set overrides are not
    known here: the messages say to add them)."""
    drawn = outcome.summary.get("drawn", {}).get(str(seed), {})
    sets = "".join(f" --set {shlex.quote(f'{k}={toml_value(v)}')}" for k, v in drawn.items())
    return (f"advinf run {shlex.quote(str(recipe))} --set seed={seed}{sets} "
            f"--out {shlex.quote(str(outcome.out / f'seed_{seed}'))}")


_SIGNALS = ("SIGINT", "SIGTERM")


def _in_workers(tasks: list[tuple], jobs: int, results: list[SeedResult], started: set[int],
                log: Callable[[str], None]) -> tuple[str | None, list[int]]:
    """Run ``tasks`` in ``jobs`` spawned worker processes, appending to ``results`` as seeds finish and to
    ``started`` as they start. Returns the signal that ended the group early, if one did, and the exit codes of
    workers killed outright (their seed in hand has no result); raises the first worker's error after the others
    stopped.

    Each worker has a pipe of its own, and this process hands it the next seed when it reports the last one: no
    lock is shared, so a worker killed at any moment (SIGKILL from a machine out of memory) ends its own pipe and
    nothing else, and the other workers carry on with the seeds left."""
    ctx = torch.multiprocessing.get_context("spawn")
    todo = list(tasks)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    pipes, theirs, workers = [], [], []
    for _ in range(jobs):
        here, there = ctx.Pipe()
        pipes.append(here)
        theirs.append(there)
        workers.append(ctx.Process(target=_worker, args=(there, threads)))
    received: list[str] = []
    error: str | None = None

    def forward(signum: int, frame: Any) -> None:  # the workers have their own process group: only this reaches them
        received.append(signal.Signals(signum).name)
        _signal_all(workers, signum)

    def hand_next(i: int) -> None:
        """The next seed to worker ``i``, or None (stop) once the group is stopping or no seed is left."""
        task = todo.pop(0) if todo and not received and error is None else None
        try:
            pipes[i].send(task)
        except (BrokenPipeError, OSError):  # it died meanwhile: its pipe's end is seen below
            if task is not None:
                todo.insert(0, task)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for w, there in zip(workers, theirs, strict=True):
            w.start()
            there.close()  # the worker's end is its own now: its death ends the pipe (EOF here)
        for i in range(jobs):
            hand_next(i)
        live = set(range(jobs))
        while live:
            ready = mp_connection.wait([pipes[i] for i in live], timeout=0.5)
            for i in [i for i in live if pipes[i] in ready]:
                try:
                    kind, value = pipes[i].recv()
                except (EOFError, OSError):  # the worker ended (returned, or was killed outright)
                    live.discard(i)
                    continue
                if kind == "started":
                    started.add(value)
                elif kind == "result":
                    results.append(value)
                    log(_line(value))
                    hand_next(i)
                elif kind == "error" and error is None:
                    error = value
                    _signal_all(workers, signal.SIGTERM)  # the other seeds checkpoint and stop
        for w in workers:
            w.join()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for end in pipes:
            end.close()
    if error is not None:
        raise UserError(error)
    killed = [w.exitcode for w in workers if w.exitcode]  # a worker that returns, even after an error, exits 0
    return received[0] if received else next((r.stopped for r in results if r.stopped in _SIGNALS), None), killed


def _signal_all(workers: list, signum: int) -> None:
    for w in workers:
        if w.pid is not None and w.is_alive():
            os.kill(w.pid, signum)


def _worker(pipe: Any, threads: int) -> None:
    """A worker process: the seeds its pipe hands it, one at a time, until it hands None or a signal stopped one."""
    os.setpgrp()  # a terminal's Ctrl-C reaches the parent alone, which forwards it once
    torch.set_num_threads(threads)
    try:
        while (task := pipe.recv()) is not None:
            pipe.send(("started", task[1]))
            try:
                result = _run_one(*task)
            except UserError as exc:
                pipe.send(("error", f"seed {task[1]}: {exc}"))
                break
            except Exception as exc:
                pipe.send(("error", f"seed {task[1]} failed: {type(exc).__name__}: {exc}"))
                break
            pipe.send(("result", result))
            if result.stopped in _SIGNALS:
                break
    except (EOFError, OSError):  # the group's process is gone: nothing to report to
        pass
    finally:
        pipe.close()


def _run_one(recipe: str, seed: int, out: str, overrides: list[str], stop_after: int | None, plugins: list[str],
             quiet: bool, host: PluginHost | None = None) -> SeedResult:
    """One seed: exactly ``advinf run RECIPE --set seed=K --out OUT/seed_K`` (its overrides last, so it wins)."""
    def warnings_only(message: str) -> None:  # workers run side by side: their warnings, not their chatter
        if message.startswith("warning:"):
            _stderr(f"seed {seed}: {message}")

    outcome = run_recipe(recipe, out=out, overrides=[*overrides, f"seed={seed}"], stop_after=stop_after,
                         progress="none" if quiet else None, host=host, plugins=() if host else plugins,
                         log=warnings_only if quiet else _stderr, on_signal="return")
    r = outcome.result
    return SeedResult(seed, outcome.run_dir, r.steps, r.seconds, r.eval, r.stopped)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _line(r: SeedResult) -> str:
    state = f"stopped ({r.stopped})" if r.stopped else "done"
    return f"seed {r.seed}: {state}, {r.steps} steps in {r.seconds:.1f} s -> {r.run_dir}"


def summarise(results: Sequence[SeedResult], seconds: float, jobs: int) -> dict[str, Any]:
    """Mean and (sample) standard deviation of every metric over the seeds that gave it a finite value; the
    others are listed under ``missing`` (a seed stopped before its evaluation, or a non-finite result)."""
    per_seed = {r.seed: flatten(r.eval) for r in results}
    names = sorted({k for r in results for k in flatten(r.eval, finite=False)})  # one non-finite everywhere too
    metrics: dict[str, dict[str, Any]] = {}
    for name in names:
        values = {s: m[name] for s, m in per_seed.items() if name in m}
        v = list(values.values())
        metrics[name] = {"mean": statistics.fmean(v) if v else None,
                         "std": (statistics.stdev(v) if len(v) > 1 else 0.0) if v else None,
                         "n": len(v), "values": {str(s): x for s, x in values.items()}}
        if len(v) < len(per_seed):
            metrics[name]["missing"] = [str(s) for s in per_seed if s not in values]
    return {"seeds": [r.seed for r in results], "jobs": jobs, "seconds": round(seconds, 3),
            "seed_seconds": {str(r.seed): round(r.seconds, 3) for r in results},
            "runs": {str(r.seed): str(r.run_dir) for r in results},
            "stopped": {str(r.seed): r.stopped for r in results if r.stopped}, "metrics": metrics}
