"""The profile summary (tests/bench/profile_summary.py): py-spy's collapsed stacks in, bucket shares out. Pure: no
servers, no py-spy."""

from __future__ import annotations

import pytest

from tests.bench.profile_summary import (
    ASYNCPG,
    EPOLL,
    EVENT_LOOP,
    GRPC_C,
    GRPC_POLLER,
    IMPORTS,
    INTERCEPTORS,
    LOGGING,
    MAPPING,
    PROFILER,
    PROTOBUF,
    REDIS,
    SERVICE,
    SOCKET_IO,
    cpu_shares,
    frame_bucket,
    summarise,
)

SVC = 'process 100:"python -m tests.bench.profile B3";process 200:"/venv/bin/python -m services.event"'
CLIENT = 'process 100:"python -m tests.bench.profile B3"'
LIB = "/venv/lib/python3.11"
SITE = f"{LIB}/site-packages"
LOOP = (
    f"BaseEventLoop.run_forever ({LIB}/asyncio/base_events.py:607);"
    f"BaseEventLoop._run_once ({LIB}/asyncio/base_events.py:1922)"
)
RUN = f"Handle._run ({LIB}/asyncio/events.py:80)"
INTERCEPT = "RpcInterceptor._handle (/repo/services/common/interceptors.py:200)"


def _line(process: str, thread: str, frames: list[str], count: int) -> str:
    return ";".join([process, thread, *frames]) + f" {count}"


STACKS = "\n".join(
    [
        # grpc.aio's Cython code stepped by the loop: no Python frame below Handle._run
        _line(SVC, "thread (200): MainThread", [LOOP, RUN], 40),
        # our interceptor logging through structlog: the innermost named frame is structlog's
        _line(
            SVC,
            "thread (200): MainThread",
            [LOOP, RUN, INTERCEPT, f"BoundLogger.info ({SITE}/structlog/_native.py:172)"],
            10,
        ),
        # our interceptor's own code
        _line(SVC, "thread (200): MainThread", [LOOP, RUN, INTERCEPT], 5),
        # row → domain: a dataclass __init__ (generated, file "<string>") inside repository.to_event is mapping
        _line(
            SVC,
            "thread (200): MainThread",
            [
                LOOP,
                RUN,
                INTERCEPT,
                "EventService.list_events (/repo/services/event/service.py:300)",
                "list_events (/repo/services/event/repository.py:290)",
                "to_event (/repo/services/event/repository.py:85)",
                "__init__ (<string>:2)",
            ],
            15,
        ),
        _line(
            SVC,
            "thread (200): MainThread",
            [LOOP, RUN, "list_events (/repo/services/event/repository.py:290)", f"fetch ({SITE}/asyncpg/pool.py:9)"],
            10,
        ),
        _line(SVC, "thread (200): MainThread", [LOOP, f"EpollSelector.select ({LIB}/selectors.py:468)"], 5),
        _line(SVC, "thread (201): Thread-1 (_poll_wrapper)", [f"Thread.run ({LIB}/threading.py:982)"], 6),
        # with --native the poller thread shows grpc's C frames and libc's epoll_wait: still the poller thread
        _line(
            SVC,
            "thread (201): Thread-1 (_poll_wrapper)",
            [
                f"Thread.run ({LIB}/threading.py:982)",
                f"0x7f43 ({SITE}/grpc/_cython/cygrpc.so)",
                "epoll_wait (libc.so.6)",
            ],
            4,
        ),
        _line(
            SVC,
            "thread (200): MainThread",
            ["<module> (/repo/x.py:1)", "_find_and_load (<frozen importlib._bootstrap>:1176)", "<module> (a.py:1)"],
            5,
        ),
        # the client process: a redis call and a protobuf parse; and the profiler's own sampler thread
        _line(CLIENT, "thread (100): MainThread", [LOOP, f"Redis.get ({SITE}/redis/asyncio/client.py:1)"], 3),
        _line(CLIENT, "thread (100): MainThread", [LOOP, f"Message.FromString ({SITE}/google/protobuf/x.py:1)"], 1),
        _line(CLIENT, "thread (101): cpu-sampler", [f"Process.cpu_times ({SITE}/psutil/__init__.py:1)"], 6),
        "",
        "garbage line without a count",
    ]
)


def test_every_sample_lands_in_one_bucket_per_process() -> None:
    profiles = summarise(STACKS)
    assert set(profiles) == {100, 200}
    svc = profiles[200]
    assert svc.command == "/venv/bin/python -m services.event"
    assert svc.samples == 100
    assert sum(svc.self_counts.values()) == svc.samples
    assert svc.self_counts == {
        GRPC_C: 40,
        LOGGING: 10,
        INTERCEPTORS: 5,
        MAPPING: 15,
        ASYNCPG: 10,
        EPOLL: 5,
        GRPC_POLLER: 10,
        IMPORTS: 5,
    }
    assert svc.share(GRPC_C) == pytest.approx(40.0)
    # the deciding frame, without its line number and with the path cut after site-packages
    assert svc.frame_counts["Handle._run (asyncio/events.py)"] == 40
    assert svc.frame_counts["BoundLogger.info (structlog/_native.py)"] == 10
    assert svc.frame_counts["to_event (services/event/repository.py)"] == 15
    assert svc.share(MAPPING) == pytest.approx(15.0)
    # at work: the 5 start-up samples left out of the denominator
    assert svc.share(MAPPING, steady=True) == pytest.approx(100 * 15 / 95)
    assert svc.share(IMPORTS, steady=True) == 0.0


def test_inclusive_share_counts_everything_below_a_layer() -> None:
    svc = summarise(STACKS)[200]
    # interceptor frames are on the logging, own-code and mapping samples: 10 + 5 + 15
    assert svc.share(INTERCEPTORS, inclusive=True) == pytest.approx(30.0)
    # service.py / repository.list_events: on the mapping (15) and asyncpg (10) samples
    assert svc.share(SERVICE, inclusive=True) == pytest.approx(25.0)
    # frames above the loop's dispatch (run_forever, _run_once) count only where nothing was dispatched: epoll
    assert svc.share(EVENT_LOOP, inclusive=True) == pytest.approx(5.0)
    # Handle._run is grpc.aio's C/Cython time only as the innermost frame, not on every sample it dispatched
    assert svc.share(GRPC_C, inclusive=True) == pytest.approx(40.0)
    assert svc.top(2) == [(GRPC_C, 40.0), (MAPPING, 15.0)]


def test_client_process_and_profiler_thread() -> None:
    client = summarise(STACKS)[100]
    assert client.samples == 10
    assert client.self_counts == {REDIS: 3, PROTOBUF: 1, PROFILER: 6}
    assert client.thread_counts["cpu-sampler"] == 6


@pytest.mark.parametrize(
    ("frame", "bucket"),
    [
        (f"encode ({SITE}/grpc/_cython/cygrpc.pyx:1)", GRPC_C),
        ("grpc_core::Server::CallData::Start (libgrpc.so)", GRPC_C),
        (f"Event.SerializeToString ({SITE}/google/protobuf/message.py:1)", PROTOBUF),
        ("event_to_proto (/repo/services/event/mappers.py:40)", MAPPING),
        ("list_events (/repo/services/event/repository.py:290)", SERVICE),
        (f"_SelectorSocketTransport.write ({LIB}/asyncio/selector_events.py:1)", SOCKET_IO),
        (f"BaseSelectorEventLoop._read_from_self ({LIB}/asyncio/selector_events.py:1)", EVENT_LOOP),
        (f"partial ({LIB}/functools.py:1)", None),
    ],
)
def test_frame_buckets(frame: str, bucket: str | None) -> None:
    assert frame_bucket(frame) == bucket


def test_cpu_shares() -> None:
    assert cpu_shares({"postgres": 3.0, "service": 1.0, "idle": 0.0}) == {"postgres": 75.0, "service": 25.0}
    assert cpu_shares({}) == {}
