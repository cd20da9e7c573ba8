"""From py-spy's collapsed stacks to "what the CPU time is made of": pure functions, no I/O (tests/bench/profile.py
runs the profiler and writes the files; ``test_profile_summary.py`` tests these).

Input: the text ``py-spy record --format raw --threads --full-filenames --subprocesses`` writes, one line per
distinct stack, ``frame;frame;...;frame <count>``, outermost frame first. The first frames name the process chain
(``process <pid>:"<command line>"``, the parent first, then the sampled process) and the thread (``thread
(<tid>): <name>``); the rest are code frames ``<function> (<file>:<line>)`` (with ``--native``, also native frames
``<symbol> (<library>)``).

Every sample is put in exactly one **bucket** (its *self* bucket), so a process's self shares add up to 100 %:
the bucket of the innermost code frame that names one, walking outwards past frames that name none (generic
standard library code such as ``functools``, ``contextlib``, ``dataclasses``' generated ``__init__`` — their time
is their caller's). A sample also counts towards the *inclusive* (self + children) share of every bucket any of
its frames names — what calling into that layer costs, everything below it included; inclusive shares overlap.

Without ``--native``, code that runs in a C or Cython extension shows up as the innermost Python frame that called
it: time inside grpc.aio's Cython server (which has no Python frames) lands on asyncio's ``Handle._run``, the
frame that steps a Cython coroutine or runs a Cython callback; as the innermost frame it gets the bucket ``grpc.aio
C core / Cython callbacks`` rather than being folded into the event loop. Inclusive shares only count frames below
the last such dispatch (what the loop is running), not the bootstrap frames every sample has above it. The poller
thread grpc.aio starts to drain its completion queue has no Python frames below ``threading``: it is recognised by
its thread name.

Four more buckets keep apart what is not the measured work or is easily misread: a sample inside an import is
``start-up (imports)`` whatever the imported module runs; the event loop's ``select`` (epoll) has a bucket of its
own (py-spy counts a thread in a system call as active unless the kernel says it sleeps, so it holds both polling
work and some waiting); the asyncio socket transports' reads and writes are ``socket I/O`` (asyncpg's and
redis-py's sockets: their protocol parsing, in Cython, runs under ``data_received``); and the CPU-sampling thread
of tests/bench/profile.py (``cpu-sampler``) is named as such.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

GRPC_C = "grpc.aio C core / Cython callbacks"
GRPC_POLLER = "grpc.aio poller thread"
GRPC_PY = "grpc (Python layer)"
INTERCEPTORS = "our interceptors"
LOGGING = "structlog/logging"
PROTOBUF = "protobuf serialization"
ASYNCPG = "asyncpg"
REDIS = "redis-py"
MAPPING = "repository mapping (row → domain → proto)"
SERVICE = "our service code"
OBSERVABILITY = "metrics/tracing (prometheus, opentelemetry)"
AUTH = "auth (JWT)"
EVENT_LOOP = "asyncio event loop"
EPOLL = "epoll (the event loop's select)"
SOCKET_IO = "socket I/O (asyncio transports: asyncpg, redis-py)"
IMPORTS = "start-up (imports)"
PROFILER = "the profiler's own CPU sampler thread"
BENCH = "bench client (tests/)"
THREADS = "other threads (idle/unknown)"
OTHER = "other"

NOT_WORK = (IMPORTS, PROFILER)

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
PROCESS = re.compile(r'^process (?P<pid>\d+):"(?P<cmd>.*)"$')
SHORT_PATH = re.compile(r"^.*/site-packages/|^.*?/lib/python3\.\d+/|^.*/(?=(?:services|tests|gen)/)")
THREAD = re.compile(r"^thread \((?P<tid>[^)]*)\)(?:: (?P<name>.*))?$")

# (bucket, test on (function, file)); first match wins. Paths are matched with "/" on both sides of a package.
RULES: list[tuple[str, Callable[[str, str], bool]]] = [
    (GRPC_C, lambda fn, f: "cygrpc" in f or "libgrpc" in f or "grpc_core::" in fn or "/grpc/_cython/" in f),
    (INTERCEPTORS, lambda fn, f: f.endswith(("/services/common/interceptors.py", "/services/common/deadline.py"))),
    (AUTH, lambda fn, f: f.endswith("/services/common/auth.py") or "/jwt/" in f or "/cryptography/" in f),
    (LOGGING, lambda fn, f: "/structlog/" in f or "/logging/" in f or f.endswith("/services/common/logging.py")),
    (PROTOBUF, lambda fn, f: "/google/protobuf/" in f or "_pb2" in f or "_upb" in f),
    (ASYNCPG, lambda fn, f: "/asyncpg/" in f),
    (REDIS, lambda fn, f: "/redis/" in f),
    (OBSERVABILITY, lambda fn, f: "/prometheus_client/" in f or "/opentelemetry/" in f),
    (OBSERVABILITY, lambda fn, f: f.endswith(("/services/common/metrics.py", "/services/common/tracing.py"))),
    (
        MAPPING,
        lambda fn, f: (
            f.endswith(("/mappers.py", "/services/common/protos.py"))
            or (f.endswith("/repository.py") and fn.split(".")[-1].startswith("to_"))
        ),
    ),
    (GRPC_PY, lambda fn, f: "/grpc/" in f or "/grpc_" in f),
    (SERVICE, lambda fn, f: "/services/" in f),
    (BENCH, lambda fn, f: "/tests/" in f),
    (EPOLL, lambda fn, f: f.endswith("/selectors.py") or "epoll_wait" in fn),
    (SOCKET_IO, lambda fn, f: f.endswith("/asyncio/selector_events.py") and "Transport" in fn),
    (EVENT_LOOP, lambda fn, f: "/asyncio/" in f or "uvloop" in f),
]


def frame_bucket(frame: str) -> str | None:
    """The bucket a code frame names, or None (generic code: its time is its caller's)."""
    match = FRAME.match(frame)
    func, file = (match.group("func"), match.group("file")) if match else (frame, "")
    for bucket, test in RULES:
        if test(func, file):
            return bucket
    return None


@dataclass
class ProcessProfile:
    """The samples of one process: self and inclusive counts per bucket."""

    pid: int
    command: str
    samples: int = 0
    self_counts: Counter[str] = field(default_factory=Counter)
    inclusive_counts: Counter[str] = field(default_factory=Counter)
    thread_counts: Counter[str] = field(default_factory=Counter)
    frame_counts: Counter[str] = field(default_factory=Counter)
    """Per sample, the frame that decided its self bucket (function and file, no line number)."""

    def share(self, bucket: str, *, inclusive: bool = False, steady: bool = False) -> float:
        """Percent of this process's samples; ``steady``: of those neither in start-up imports nor in the profiler's
        own thread (the process at work), 0 for those two buckets."""
        counts = self.inclusive_counts if inclusive else self.self_counts
        total = self.samples - (sum(self.self_counts[b] for b in NOT_WORK) if steady else 0)
        if total <= 0 or (steady and bucket in NOT_WORK):
            return 0.0
        return 100.0 * counts[bucket] / total

    def top(self, n: int = 10, *, inclusive: bool = False) -> list[tuple[str, float]]:
        counts = self.inclusive_counts if inclusive else self.self_counts
        return [(b, self.share(b, inclusive=inclusive)) for b, _ in counts.most_common(n)]

    def as_json(self) -> dict[str, object]:
        return {
            "pid": self.pid,
            "command": self.command,
            "samples": self.samples,
            "self_percent": {b: round(self.share(b), 2) for b in self.self_counts},
            "steady_self_percent": {b: round(self.share(b, steady=True), 2) for b in self.self_counts},
            "inclusive_percent": {b: round(self.share(b, inclusive=True), 2) for b in self.inclusive_counts},
            "threads_percent": {t: round(100.0 * c / self.samples, 2) for t, c in self.thread_counts.items()},
            "top_frames_percent": {f: round(100.0 * c / self.samples, 2) for f, c in self.frame_counts.most_common(30)},
        }


def classify_stack(frames: list[str], thread_name: str) -> tuple[str, set[str], str]:
    """(self bucket, inclusive buckets, the frame that decided the self bucket) of one sample's code frames
    (outermost first)."""
    if thread_name.startswith("cpu-sampler"):
        return PROFILER, {PROFILER}, thread_name  # tests/bench/profile.py's thread, not the bench's work
    if any("(<frozen importlib._bootstrap" in frame for frame in frames):
        return IMPORTS, {IMPORTS}, "import"  # a module being imported (start-up), whatever its code does
    if "_poll_wrapper" in thread_name or "poller" in thread_name.lower():
        return GRPC_POLLER, {GRPC_POLLER}, thread_name  # by thread: with --native its frames are grpc's C code
    if frames and _is_dispatch(frames[-1]):
        return GRPC_C, {GRPC_C}, _without_line(frames[-1])
    # inclusive shares from below the event loop's last dispatch: the frames above it (main, asyncio.run, the
    # server's bootstrap) are on every sample and would make "service code" or "event loop" 100 %
    below = next((i + 1 for i in range(len(frames) - 1, -1, -1) if _is_dispatch(frames[i])), 0)
    named = [(b, frame) for frame in frames[below:] if (b := frame_bucket(frame)) is not None]
    if named:
        return named[-1][0], {b for b, _ in named}, _without_line(named[-1][1])
    if frames and "MainThread" not in thread_name:
        return THREADS, {THREADS}, thread_name
    return OTHER, {OTHER}, _without_line(frames[-1]) if frames else "(no Python frame)"


def _is_dispatch(frame: str) -> bool:
    """asyncio's ``Handle._run``: the loop running a callback or stepping a task. As the innermost frame it is time
    in C/Cython code the loop called (grpc.aio's Cython server, C task steps); above other frames it is only the
    frame every coroutine runs under."""
    return frame.startswith("Handle._run (") and "/asyncio/events.py" in frame


def _without_line(frame: str) -> str:
    """``func (/long/path/site-packages/pkg/mod.py:12)`` → ``func (pkg/mod.py)``; the repository's own files from
    ``services/``, ``tests/`` or ``gen/``."""
    match = FRAME.match(frame)
    if match is None:
        return frame
    file = SHORT_PATH.sub("", match.group("file"))
    return f"{match.group('func')} ({file})"


def summarise(collapsed: str | Iterable[str]) -> dict[int, ProcessProfile]:
    """Per sampled process (by pid): the bucket counts of py-spy's collapsed stacks."""
    lines = collapsed.splitlines() if isinstance(collapsed, str) else collapsed
    out: dict[int, ProcessProfile] = {}
    for raw in lines:
        line = raw.rstrip("\n")
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        pid, command, thread_name = 0, "", ""
        code: list[str] = []
        for frame in stack.split(";"):
            if (p := PROCESS.match(frame)) is not None:
                pid, command = int(p.group("pid")), p.group("cmd")
            elif (t := THREAD.match(frame)) is not None and not code:
                thread_name = t.group("name") or t.group("tid")
            else:
                code.append(frame)
        profile = out.setdefault(pid, ProcessProfile(pid=pid, command=command))
        self_bucket, inclusive, deciding = classify_stack(code, thread_name)
        profile.samples += count
        profile.self_counts[self_bucket] += count
        for bucket in inclusive:
            profile.inclusive_counts[bucket] += count
        profile.thread_counts[thread_name or "?"] += count
        profile.frame_counts[deciding] += count
    return out


def cpu_shares(cpu_seconds: Mapping[str, float]) -> dict[str, float]:
    """Percent of the total CPU seconds per program (programs with no CPU left out)."""
    total = sum(cpu_seconds.values())
    if total <= 0:
        return {}
    return {k: 100.0 * v / total for k, v in sorted(cpu_seconds.items(), key=lambda kv: -kv[1]) if v > 0}
