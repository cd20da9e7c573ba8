"""``python -m tests.bench.profile B3`` (``make profile BENCH=B3``): run one benchmark scenario exactly as ``make
bench`` does (``BENCH_ONLY=B3``: the same runner, scenario code, database and measurement windows) while
``py-spy`` samples every Python process of the run — this process (the bench client, which also drives the
baselines) and each service process it starts — and the CPU time of every program on the box is read per load
window. It writes, in ``tests/bench/results/`` (ignored by git):

- ``profile-<ID>.md``: CPU share per program (PostgreSQL, each service, the client, Envoy, NGINX, Redis, py-spy,
  anything else on the box) over the whole run and during each load window (grouped by the scenario's operation,
  e.g. ``via_grpc`` vs ``via_sql``, with CPU µs per call), then per Python process its samples in buckets
  (tests/bench/profile_summary.py: grpc.aio, our interceptors, structlog, protobuf, asyncpg, redis-py, mapping...);
- ``profile-<ID>.txt``: py-spy's raw collapsed stacks (``flamegraph.pl`` or speedscope read them);
- ``profile-<ID>.json``: the same figures as the summary;
- ``profile-<ID>/``: the bench run's own ``latest.md``/``latest.json`` and the service logs.

Options: ``--rate 200`` (samples per second), ``--native`` (native frames too, sampled blocking, which slows the
processes; py-spy died with SIGSEGV at 200 Hz on this box and completed at 50 Hz, so it is opt-in), ``--quick``
(QUICK=1 windows: a smoke test of this tool, meaningless figures), ``--resummarise`` (run nothing: rewrite the
summary from an earlier run's stacks and CPU figures). ``DATABASE_URL`` as for ``make bench`` (unset: an embedded
PostgreSQL whose processes are this run's own; a shared server's CPU would include other users' work). If py-spy
dies mid-run, the CPU per program is still written, and the exit status is 1.

Needs ptrace (root, or ``kernel.yama.ptrace_scope`` 0): py-spy attaches to this process and its children. CPU
figures are a 2-core box's, shared with the load generator: read them as proportions of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import psutil

from tests.bench import __main__ as bench
from tests.bench.harness import LoadResult
from tests.bench.profile_summary import ProcessProfile, cpu_shares, summarise

SELF = os.getpid()
PY_SPY = Path(sys.executable).with_name("py-spy")
OTHER = "other processes (not this run)"
N = TypeVar("N", int, float)


def program_of(proc: psutil.Process, ours: bool) -> str:
    """The program a process counts as: its role in this run, or what it is when it is not ours."""
    try:
        name = proc.name()
        cmdline = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return OTHER
    if proc.pid == SELF:
        return "bench client (this process)"
    if name == "py-spy":
        return "py-spy (the profiler)" if ours else OTHER
    for program in ("postgres", "envoy", "nginx", "redis-server", "pgbouncer"):
        if name.startswith(program):
            return program if ours else f"{program} (not this run)"
    if not ours:
        return OTHER
    if "-m" in cmdline:
        module = cmdline[cmdline.index("-m") + 1] if cmdline.index("-m") + 1 < len(cmdline) else "?"
        if module == "tests.bench.scenarios.b1_interceptors":
            try:
                bare = bool(proc.environ().get("COWATCH_BENCH_BARE"))
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                bare = False
            return "bare grpc.aio echo (B1 baseline)" if bare else "service (B1 echo app, full chain)"
        if module.startswith("tests.bench.scenarios."):  # a scenario's own entry point around a service app
            return f"service ({module.rsplit('.', 1)[-1]})"
        return f"service {module}" if module.startswith("services.") else f"python -m {module}"
    return f"{name} (child of this run)"


@dataclass
class Box:
    """CPU seconds (user + system) of every process on the box, sampled now and then, each labelled once."""

    labels: dict[int, str] = field(default_factory=dict)
    first: dict[int, float] = field(default_factory=dict)
    last: dict[int, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self, *, whole_box: bool = True) -> dict[int, float]:
        """CPU seconds per pid now (every process, or only this run's); labels processes seen for the first time
        (this run's own: this process and its descendants)."""
        now: dict[int, float] = {}
        procs = psutil.process_iter() if whole_box else [psutil.Process(SELF), *_descendants()]
        for proc in procs:
            with _suppress_gone():
                times = proc.cpu_times()
                now[proc.pid] = times.user + times.system
                if proc.pid not in self.labels:
                    ours = proc.pid == SELF or any(p.pid == SELF for p in proc.parents())
                    self.labels[proc.pid] = program_of(proc, ours)
        with self.lock:
            initial = not self.first
            for pid, cpu in now.items():
                # a process first seen after the first snapshot started during the run: all its CPU is the run's
                self.first.setdefault(pid, cpu if initial else 0.0)
                self.last[pid] = cpu
        return now

    def per_program(self, before: dict[int, float], after: dict[int, float]) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for pid, cpu in after.items():
            out[self.labels.get(pid, OTHER)] += max(0.0, cpu - before.get(pid, 0.0))
        return dict(out)

    def whole_run(self) -> dict[str, float]:
        with self.lock:
            return self.per_program(self.first, self.last)


def _descendants() -> list[psutil.Process]:
    try:
        return psutil.Process(SELF).children(recursive=True)
    except psutil.Error:
        return []


class _suppress_gone:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> bool:
        return kind is not None and issubclass(kind, psutil.Error)


@dataclass
class Window:
    label: str
    seconds: float
    calls: int
    cpu: dict[str, float]
    errors: dict[str, int] = field(default_factory=dict)
    stacks: str | None = None
    """With --per-window: py-spy's collapsed stacks of this window alone."""


class Windows:
    """Wraps the harness's load drivers in a scenario module: each closed/open loop becomes a window with the CPU
    every program spent in it, labelled by the operation it drove (its function name; ``name#2`` for a second
    operation of the same name, in order of first use)."""

    def __init__(self, box: Box, spy: SpyOptions | None = None) -> None:
        self.box = box
        self.windows: list[Window] = []
        self._ops: dict[int, str] = {}
        self.spy = spy
        """With --per-window: a py-spy of its own for each window (started before, stopped after it)."""

    def _label(self, op: Callable[..., Any]) -> str:
        key = id(op)
        if key not in self._ops:
            name = getattr(op, "__name__", "op")
            same = sum(1 for label in self._ops.values() if label.split("#")[0] == name)
            self._ops[key] = name if same == 0 else f"{name}#{same + 1}"
        return self._ops[key]

    def wrap(self, driver: Callable[..., Any], kind: str) -> Callable[..., Any]:
        async def wrapped(op: Callable[..., Any], *args: Any, **kwargs: Any) -> LoadResult:
            label = f"{self._label(op)} ({kind})"
            stacks, spy = None, None
            if self.spy is not None:  # blocks the loop while py-spy attaches: before the window, not in it
                stacks = self.spy.directory / f"window-{len(self.windows):02d}.txt"
                spy = start_py_spy(stacks, self.spy.rate, self.spy.native, stacks.with_suffix(".log"))
            before, t0 = self.box.snapshot(), time.perf_counter()
            result: LoadResult = await driver(op, *args, **kwargs)
            seconds, after = time.perf_counter() - t0, self.box.snapshot()
            if spy is not None:
                stop_py_spy(spy)
            cpu = self.box.per_program(before, after)
            window = Window(
                label, seconds, result.stats.count, cpu, dict(result.errors), str(stacks) if stacks else None
            )
            self.windows.append(window)
            return result

        return wrapped

    def install(self, module: ModuleType) -> None:
        for name, kind in (("closed_loop", "closed"), ("open_loop", "open")):
            if hasattr(module, name):
                setattr(module, name, self.wrap(getattr(module, name), kind))


@dataclass(frozen=True)
class SpyOptions:
    directory: Path
    rate: int
    native: bool


def start_py_spy(out: Path, rate: int, native: bool, log: Path) -> subprocess.Popen[bytes]:
    if not PY_SPY.exists():
        raise SystemExit(f"{PY_SPY} not found: run `make install` (py-spy is a dev dependency)")
    args = [str(PY_SPY), "record", "--pid", str(SELF), "--subprocesses", "--threads", "--full-filenames"]
    args += ["--format", "raw", "--rate", str(rate), "-o", str(out)]
    # --nonblocking: read the processes' memory without stopping them (stopping each at 200 Hz costs them, and
    # py-spy's own CPU, far more on 2 cores); a rare torn stack is the price. Native unwinding needs the process
    # stopped, so --native samples blocking.
    args.append("--native" if native else "--nonblocking")
    with log.open("wb") as sink:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT)
    time.sleep(1.0)  # attach before the run starts
    if proc.poll() is not None:
        said = log.read_text().strip()
        raise SystemExit(f"py-spy exited with {proc.returncode}: {said} (it needs ptrace: root or ptrace_scope 0)")
    return proc


def stop_py_spy(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _pct(value: float) -> str:
    return f"{value:.1f} %"


def window_table(windows: list[Window], whole: dict[str, float]) -> list[str]:
    """One row per program: share of the box's CPU over the whole run and in each operation's windows (with CPU
    µs per call there)."""
    grouped: dict[str, list[Window]] = defaultdict(list)
    for w in windows:
        grouped[w.label].append(w)
    totals = {
        label: (sum(w.seconds for w in ws), sum(w.calls for w in ws), _summed(w.cpu for w in ws))
        for label, ws in grouped.items()
    }
    programs = sorted(whole, key=lambda p: -whole[p])
    for _, _, cpu in totals.values():
        programs += [p for p in cpu if p not in programs]
    head = ["program", "whole run"]
    head += [f"{label}: {secs:.0f} s, {calls:,} calls" for label, (secs, calls, _) in totals.items()]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    whole_share = cpu_shares(whole)
    for program in programs:
        cells = [program, f"{whole.get(program, 0):.1f} s ({_pct(whole_share.get(program, 0))})"]
        for _secs, calls, cpu in totals.values():
            share = cpu_shares(cpu).get(program, 0.0)
            per_call = 1e6 * cpu.get(program, 0.0) / calls if calls else 0.0
            cells.append(f"{_pct(share)}, {per_call:,.0f} µs/call" if share >= 0.05 else "—")
        if any(c != "—" for c in cells[2:]) or whole_share.get(program, 0) >= 0.05:
            lines.append("| " + " | ".join(cells) + " |")
    failed = [_summed(w.errors for w in ws) for ws in grouped.values()]
    if any(failed):
        cells = ["*failed calls*", ""] + [", ".join(f"{k} {v}" for k, v in f.items()) or "0" for f in failed]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, "", *own_share_table(totals)]


def is_this_run(program: str) -> bool:
    """A program of the run itself: not another user's process, not the profiler."""
    return program != OTHER and "not this run" not in program and not program.startswith("py-spy")


def own_share_table(totals: dict[str, tuple[float, int, dict[str, float]]]) -> list[str]:
    """Per operation, each of the run's own programs' share of the run's own CPU (py-spy and other processes on
    the box left out: their load varies from run to run, the work one call causes does not)."""
    programs: list[str] = []
    for _, _, cpu in totals.values():
        programs += [p for p in sorted(cpu, key=lambda p: -cpu[p]) if is_this_run(p) and p not in programs]
    lines = [
        "Share of the run's own CPU (py-spy and other processes left out) per operation:",
        "",
        "| operation | " + " | ".join(programs) + " |",
        "|" + "---|" * (len(programs) + 1),
    ]
    for label, (_, _, cpu) in totals.items():
        shares = cpu_shares({p: cpu.get(p, 0.0) for p in programs})
        lines.append(f"| {label} | " + " | ".join(_pct(shares.get(p, 0.0)) for p in programs) + " |")
    return lines


def _summed(items: Iterable[Mapping[str, N]]) -> dict[str, N]:
    """Key-wise sums of several mappings (errors by kind, CPU seconds by program)."""
    out: dict[str, N] = {}
    for mapping in items:
        for key, value in mapping.items():
            out[key] = out[key] + value if key in out else value
    return out


def process_section(profile: ProcessProfile, label: str, top: int) -> list[str]:
    lines = [
        "",
        f"### {label} (pid {profile.pid}): {profile.samples:,} samples",
        "",
        f"`{profile.command}`",
        "",
        "| bucket | self | self, at work | self + children |",
        "|---|---|---|---|",
    ]
    for bucket, share in profile.top(top):
        steady, inclusive = profile.share(bucket, steady=True), profile.share(bucket, inclusive=True)
        lines.append(f"| {bucket} | {_pct(share)} | {_pct(steady) if steady else '—'} | {_pct(inclusive)} |")
    threads = ", ".join(f"{t} {100 * c / profile.samples:.0f} %" for t, c in profile.thread_counts.most_common(4))
    frames = "; ".join(f"`{f}` {100 * c / profile.samples:.1f} %" for f, c in profile.frame_counts.most_common(12))
    lines += ["", f"Threads: {threads}.", "", f"Top frames by self share (the frame deciding the bucket): {frames}."]
    return lines


def per_operation(windows: list[Window]) -> dict[str, dict[int, ProcessProfile]]:
    """With --per-window: each operation's own profile, from the stacks of its windows."""
    texts: dict[str, list[str]] = defaultdict(list)
    for w in windows:
        if w.stacks is not None and Path(w.stacks).exists():
            texts[w.label].append(Path(w.stacks).read_text())
    return {label: summarise("\n".join(parts)) for label, parts in texts.items()}


def operation_sections(operations: dict[str, dict[int, ProcessProfile]], labels: dict[int, str]) -> list[str]:
    lines = [
        "",
        "## Per operation (a py-spy of its own in each load window)",
        "",
        "Self shares at work of each process with 50 samples or more in the operation's windows, then the frames "
        "deciding the most samples.",
    ]
    for label, profiles in operations.items():
        lines += ["", f"### {label}", ""]
        for profile in sorted(profiles.values(), key=lambda p: -p.samples):
            if profile.samples < 50:
                continue
            shares = ", ".join(
                f"{b} {profile.share(b, steady=True):.1f} %"
                for b, _ in profile.top(12)
                if profile.share(b, steady=True) >= 0.5
            )
            frames = "; ".join(
                f"`{f}` {100 * c / profile.samples:.1f} %" for f, c in profile.frame_counts.most_common(6)
            )
            lines.append(f"- **{labels.get(profile.pid, '?')}** ({profile.samples:,} samples): {shares}. {frames}.")
    return lines


def report(
    sid: str,
    argv: list[str],
    rows: list[dict[str, Any]],
    whole: dict[str, float],
    windows: list[Window],
    labels: dict[int, str],
    profiles: dict[int, ProcessProfile],
    meta: dict[str, Any],
) -> tuple[str, dict[str, Any]]:
    lines = [
        f"# Profile of {sid}",
        "",
        f"`{' '.join(argv)}` — {meta['when']}; {meta['machine']}; load average {meta['load_before']} before, "
        f"{meta['load_after']} after; py-spy {meta['rate']} Hz, idle samples off, native frames "
        f"{'on' if meta['native'] else 'off'}{', one py-spy per load window' if meta.get('per_window') else ''} "
        f"({meta.get('py_spy', '?')})"
        f"{'; QUICK: figures meaningless' if meta['quick'] else ''}.",
        "",
        "The load generator, the services, PostgreSQL and the proxies share this box's cores: figures are "
        "proportions from one run, not capacities.",
        "",
        "## The bench row(s)",
        "",
        "| id | cowatch | baseline | ratio |",
        "|---|---|---|---|",
    ]
    for row in rows:
        ratio = f"{row['ratio']:.2f}" if row.get("ratio") is not None else "—"
        lines.append(f"| {row['id']} | {row['cowatch']} | {row['baseline']} | {ratio} |")
    lines += [
        "",
        "## CPU per program",
        "",
        "Share of all CPU time used on the box (user + system, /proc via psutil): over the whole run (set-up, "
        "seeding and baselines included) and during each load window of the scenario, grouped by the operation "
        "it drove (warm-ups included), with CPU µs per completed call.",
        "",
        *window_table(windows, whole),
        *(operation_sections(operations, labels) if (operations := per_operation(windows)) else []),
        "",
        "## Python processes (py-spy samples)",
        "",
        "Percent of the process's own samples (idle samples excluded). *self*: each sample in exactly one bucket "
        "(its innermost frame that names one; sums to 100 %). *self, at work*: the same without the samples of "
        "start-up imports and of the profiler's own thread (what the process does under load). *self + children*: "
        "samples with any frame in the bucket below the event loop's dispatch (overlapping). Buckets: "
        "tests/bench/profile_summary.py.",
    ]
    ordered = sorted(profiles.values(), key=lambda p: -p.samples)
    for profile in ordered:
        if profile.samples < 20:
            continue
        lines += process_section(profile, labels.get(profile.pid, "?"), top=12)
    data = {
        "meta": meta,
        "rows": rows,
        "cpu_seconds_whole_run": whole,
        "windows": [vars(w) for w in windows],
        "processes": [dict(p.as_json(), program=labels.get(p.pid, "?")) for p in ordered],
        "per_operation": {
            label: [dict(p.as_json(), program=labels.get(p.pid, "?")) for p in profiles.values()]
            for label, profiles in operations.items()
        },
        "labels": labels,
    }
    return "\n".join(lines) + "\n", data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", help="one scenario id, e.g. B3")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second (default 200)")
    parser.add_argument("--native", action="store_true", help="native frames too, sampled blocking (opt-in)")
    parser.add_argument("--quick", action="store_true", help="QUICK=1 windows (a smoke test, meaningless figures)")
    parser.add_argument(
        "--per-window",
        action="store_true",
        help="a py-spy per load window instead of one for the run: a profile per operation, load windows only",
    )
    parser.add_argument(
        "--resummarise",
        action="store_true",
        help="run nothing: rewrite profile-<ID>.md/.json from the .txt and .json of an earlier run (new bucket rules)",
    )
    args = parser.parse_args(argv)
    sid = args.scenario.strip().upper()
    results = Path(os.environ.get("BENCH_RESULTS_DIR") or bench.RESULTS_DIR)
    stacks = results / f"profile-{sid}.txt"
    if args.resummarise:
        return resummarise(sid, results, stacks)
    found = bench.discover({sid})
    if len(found) != 1:
        parser.error(f"no scenario {sid} in tests/bench/scenarios")
    module = found[0][1]
    run_dir = results / f"profile-{sid}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    os.environ.update({"BENCH_ONLY": sid, "BENCH_RESULTS_DIR": str(run_dir)})
    if args.quick:
        os.environ["QUICK"] = "1"

    box = Box()
    spy_options = SpyOptions(run_dir / "windows", args.rate, args.native) if args.per_window else None
    if spy_options is not None:
        spy_options.directory.mkdir()
    windows = Windows(box, spy_options)
    windows.install(module)
    load_before = f"{os.getloadavg()[0]:.1f}"
    spy = None if args.per_window else start_py_spy(stacks, args.rate, args.native, run_dir / "py-spy.log")
    box.snapshot()
    done = threading.Event()

    def sample() -> None:
        # this run's processes only (reading every process on a busy box is itself CPU): one that exits mid-run
        # keeps the CPU it had at the last sample (≤ 1 s of it lost)
        while not done.wait(1.0):
            box.snapshot(whole_box=False)

    sampler = threading.Thread(target=sample, name="cpu-sampler", daemon=True)
    sampler.start()
    try:
        status = asyncio.run(bench.main())
    finally:
        done.set()
        sampler.join()
        box.snapshot()
        spy_status = stop_py_spy(spy) if spy is not None else 0
    if spy_options is not None:  # the run's stacks: all its windows'
        parts = [Path(w.stacks).read_text() for w in windows.windows if w.stacks and Path(w.stacks).exists()]
        stacks.write_text("\n".join(parts))
        logs = sorted(spy_options.directory.glob("*.log"))
        (run_dir / "py-spy.log").write_text("".join(log.read_text() for log in logs))
    spy_failed = spy_status != 0 or not stacks.exists()
    if spy_failed:  # the CPU per program is still worth writing: it does not come from py-spy
        print(f"py-spy exited with {spy_status}: no stacks; CPU per program only", file=sys.stderr)
    latest = json.loads((run_dir / "latest.json").read_text())
    meta = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}",
        "load_before": load_before,
        "load_after": f"{os.getloadavg()[0]:.1f}",
        "rate": args.rate,
        "native": args.native,
        "per_window": args.per_window,
        "quick": args.quick,
        "postgres": latest["meta"]["postgres"],
        "py_spy": py_spy_summary(run_dir / "py-spy.log"),
    }
    rows = [{k: r.get(k) for k in ("id", "cowatch", "baseline", "ratio", "notes")} for r in latest["rows"]]
    command = ["python", "-m", "tests.bench.profile", *(argv if argv is not None else sys.argv[1:])]
    if spy_failed:
        meta["py_spy"] = f"py-spy exited with {spy_status}, no samples; {meta['py_spy']}"
    profiles = {} if spy_failed else summarise(stacks.read_text())
    write(sid, results, *report(sid, command, rows, box.whole_run(), windows.windows, box.labels, profiles, meta))
    return 1 if spy_failed else status


def write(sid: str, results: Path, text: str, data: dict[str, Any]) -> None:
    (results / f"profile-{sid}.md").write_text(text)
    (results / f"profile-{sid}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(text)
    print(f"written: {results / f'profile-{sid}.md'}, .txt (collapsed stacks), .json", file=sys.stderr)


def resummarise(sid: str, results: Path, stacks: Path) -> int:
    """Rewrite the summary of an earlier run from its stacks and CPU figures (after a change of bucket rules)."""
    old = json.loads((results / f"profile-{sid}.json").read_text())
    labels = {int(pid): label for pid, label in old.get("labels", {}).items()}
    labels = labels or {int(p["pid"]): p["program"] for p in old["processes"]}
    windows = [Window(**w) for w in old["windows"]]
    command = ["python", "-m", "tests.bench.profile", sid, "--resummarise"]
    meta = dict(old["meta"], resummarised=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    text, data = report(
        sid, command, old["rows"], old["cpu_seconds_whole_run"], windows, labels, summarise(stacks.read_text()), meta
    )
    write(sid, results, text, data)
    return 0


def py_spy_summary(log: Path) -> str:
    """py-spy's own last word: "Samples: N Errors: M" (errors: stacks it could not read, e.g. a process exiting),
    summed over its runs (one per window with --per-window)."""
    try:
        text = log.read_text()
    except OSError:
        return "py-spy log missing"
    counts = [(int(a), int(b)) for a, b in re.findall(r"Samples: (\d+) Errors: (\d+)", text)]
    behind = text.count("behind in sampling")
    said = f"Samples: {sum(a for a, _ in counts)} Errors: {sum(b for _, b in counts)}" if counts else "no sample count"
    runs = f" over {len(counts)} py-spy runs" if len(counts) > 1 else ""
    return said + runs + (f", fell behind {behind}×" if behind else "")


if __name__ == "__main__":
    raise SystemExit(main())
