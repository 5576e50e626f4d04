"""Admission control: at most max_in_flight inference requests at once, a FIFO queue
bounded in size and delay, the excess answered 503 `overloaded` with Retry-After in the
protocol's error shape; everything that is not inference always passes."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from bench.harness.launcher import free_port
from bench.harness.load import LoadResult
from bench.harness.overload import measure_overload, overload_point
from bench.harness.payloads import Payload
from service.api.admission import (
    AdmissionController,
    AdmissionLimits,
    AdmissionMiddleware,
    ShedReason,
)
from service.api.http_limits import ARRIVAL_EXTENSION, HttpLimits, protocol_factory
from service.api.middleware import SECURITY_HEADERS
from service.api.status import ERROR_CODE_HEADER
from service.app import create_app
from service.metrics import ServiceMetrics
from service.runtime.batching import RequestBacklog
from service.settings import Settings

from ..conftest import ADMIN_TOKEN, ROW_TOY
from ..scrape import scrape

V1_PREDICT = "/v1/models/toy/predict"
V2_INFER = "/v2/models/toy/infer"
V2_VERSIONED_INFER = "/v2/models/toy/versions/1/infer"


class HeldApp:
    """A fake ASGI app: each request records its path on arrival, then waits until the
    test lets it go (`finish`), then answers 200."""

    def __init__(self) -> None:
        self.arrived: list[str] = []
        self._gates: dict[str, asyncio.Event] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tag = scope["path"] + "?" + scope["query_string"].decode()
        self.arrived.append(tag)
        gate = self._gates.setdefault(tag, asyncio.Event())
        await gate.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    def finish(self, tag: str) -> None:
        self._gates.setdefault(tag, asyncio.Event()).set()


class Answer:
    """What the middleware sent for one request."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.body = b""

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode(): v.decode() for k, v in message["headers"]}
        else:
            self.body += message.get("body", b"")


def _scope(path: str, method: str = "POST", tag: str = "") -> Scope:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "root_path": "",
        "query_string": tag.encode(),
        "headers": [],
    }


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


class Driver:
    """Runs requests through an `AdmissionMiddleware` over a `HeldApp`, on one loop."""

    def __init__(self, limits: AdmissionLimits) -> None:
        self.app = HeldApp()
        self.shed: list[tuple[str, ShedReason]] = []
        self.depths: list[int] = []
        self.middleware = AdmissionMiddleware(
            self.app,
            limits,
            on_shed=lambda path, reason, seconds: self.shed.append((path, reason)),
            on_depth=self.depths.append,
        )

    def start(
        self, path: str = V1_PREDICT, method: str = "POST", tag: str = ""
    ) -> tuple[asyncio.Task[None], Answer]:
        answer = Answer()
        task = asyncio.ensure_future(
            self.middleware(_scope(path, method, tag), _receive, answer.send)
        )
        return task, answer

    @property
    def controller(self) -> AdmissionController:
        assert self.middleware.controller is not None
        return self.middleware.controller


async def _settle() -> None:
    """Let every runnable task run until it waits."""
    for _ in range(5):
        await asyncio.sleep(0)


def _run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


def test_requests_up_to_the_limit_are_admitted_at_once_and_the_next_wait() -> None:
    async def scenario() -> None:
        driver = Driver(AdmissionLimits(max_in_flight=3))
        started = [driver.start(tag=str(i)) for i in range(4)]
        await _settle()
        assert len(driver.app.arrived) == 3
        assert driver.controller.in_flight == 3 and driver.controller.queue_depth == 1
        driver.app.finish(V1_PREDICT + "?0")
        await _settle()
        assert driver.app.arrived[-1] == V1_PREDICT + "?3"
        for i in range(1, 4):
            driver.app.finish(f"{V1_PREDICT}?{i}")
        await asyncio.gather(*(task for task, _ in started))
        assert [answer.status for _, answer in started] == [200] * 4
        assert driver.controller.in_flight == 0 and driver.controller.queue_depth == 0
        assert driver.shed == []

    _run(scenario)


def test_waiters_are_admitted_in_arrival_order() -> None:
    async def scenario() -> None:
        driver = Driver(AdmissionLimits(max_in_flight=1))
        order = [5, 2, 7, 1, 9]
        tasks = []
        for i in order:
            tasks.append(driver.start(tag=str(i))[0])
            await _settle()
        for i in order:
            driver.app.finish(f"{V1_PREDICT}?{i}")
            await _settle()
        await asyncio.gather(*tasks)
        assert driver.app.arrived == [f"{V1_PREDICT}?{i}" for i in order]

    _run(scenario)


def test_a_newcomer_does_not_overtake_the_queue_when_a_slot_frees() -> None:
    async def scenario() -> None:
        driver = Driver(AdmissionLimits(max_in_flight=1))
        first, _ = driver.start(tag="first")
        await _settle()
        waiter, _ = driver.start(tag="waiter")
        await _settle()
        driver.app.finish(V1_PREDICT + "?first")
        newcomer, _ = driver.start(tag="newcomer")  # arrives as the slot frees
        await _settle()
        assert driver.app.arrived == [V1_PREDICT + "?first", V1_PREDICT + "?waiter"]
        driver.app.finish(V1_PREDICT + "?waiter")
        driver.app.finish(V1_PREDICT + "?newcomer")
        await asyncio.gather(first, waiter, newcomer)

    _run(scenario)


def test_a_full_queue_sheds_the_next_request_at_once() -> None:
    async def scenario() -> None:
        driver = Driver(AdmissionLimits(max_in_flight=1, max_queue=2))
        held = [driver.start(tag=str(i)) for i in range(3)]
        await _settle()
        task, answer = driver.start(tag="excess")
        await task  # answered while the others are still held or queued
        assert answer.status == 503
        assert driver.shed == [(V1_PREDICT, "queue_full")]
        assert driver.controller.queue_depth == 2
        assert driver.app.arrived == [V1_PREDICT + "?0"]
        for i in range(3):
            driver.app.finish(f"{V1_PREDICT}?{i}")
        await asyncio.gather(*(t for t, _ in held))
        assert [a.status for _, a in held] == [200, 200, 200]

    _run(scenario)


def test_a_waiter_past_the_longest_delay_is_shed_and_leaves_the_queue() -> None:
    async def scenario() -> None:
        driver = Driver(AdmissionLimits(max_in_flight=1, max_queue_delay_seconds=0.01))
        holder, _ = driver.start(tag="holder")
        await _settle()
        waiter, answer = driver.start(tag="waiter")
        await waiter  # the holder is never let go before this answer
        assert answer.status == 503
        assert driver.shed == [(V1_PREDICT, "queue_timeout")]
        assert driver.controller.queue_depth == 0 and driver.controller.in_flight == 1
        assert driver.depths == [1, 0]
        driver.app.finish(V1_PREDICT + "?holder")
        await holder
        assert driver.controller.in_flight == 0
        assert driver.app.arrived == [V1_PREDICT + "?holder"]

    _run(scenario)


def test_each_waiter_is_shed_at_its_own_deadline_by_one_timer() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        driver = Driver(AdmissionLimits(max_in_flight=1, max_queue_delay_seconds=0.15))
        holder, _ = driver.start(tag="holder")
        await _settle()
        shed_at: dict[str, float] = {}
        deadlines: dict[str, float] = {}

        async def wait(tag: str, waited: float) -> None:
            deadlines[tag] = loop.time() - waited + 0.15
            scope = _arrived(_scope(V1_PREDICT, tag=tag), waited)
            await driver.middleware(scope, _receive, Answer().send)
            shed_at[tag] = loop.time()

        # Queued in this order, due in the reverse one: each still goes at its own time.
        waiters = [asyncio.ensure_future(wait(tag, w)) for tag, w in (("a", 0), ("b", 0.1))]
        await asyncio.gather(*waiters)
        assert driver.shed == [(V1_PREDICT, "queue_timeout")] * 2
        assert shed_at["b"] < shed_at["a"]
        assert all(shed_at[tag] >= deadlines[tag] - 0.005 for tag in deadlines)
        assert driver.controller.queue_depth == 0 and driver.controller.in_flight == 1
        driver.app.finish(V1_PREDICT + "?holder")
        await holder
        assert driver.app.arrived == [V1_PREDICT + "?holder"]

    _run(scenario)


def _arrived(scope: Scope, seconds_ago: float) -> Scope:
    """``scope`` as the HTTP protocol stamps it, its task created ``seconds_ago``."""
    now = asyncio.get_running_loop().time()
    return {**scope, "extensions": {ARRIVAL_EXTENSION: {"loop_time": now - seconds_ago}}}


def test_a_request_that_waited_for_the_event_loop_past_the_delay_is_shed_with_slots_free() -> None:
    async def scenario() -> None:
        driver = Driver(AdmissionLimits(max_in_flight=8, max_queue_delay_seconds=0.1))
        late, fresh = Answer(), Answer()
        await driver.middleware(_arrived(_scope(V1_PREDICT), 0.15), _receive, late.send)
        driver.app.finish(V1_PREDICT + "?")
        await driver.middleware(_arrived(_scope(V1_PREDICT), 0.05), _receive, fresh.send)
        assert late.status == 503 and orjson.loads(late.body)["error"]["code"] == "overloaded"
        assert fresh.status == 200
        assert driver.shed == [(V1_PREDICT, "queue_timeout")]
        assert driver.app.arrived == [V1_PREDICT + "?"]  # the late one never reached the app
        assert driver.controller.in_flight == 0

    _run(scenario)


def test_the_wait_before_the_queue_counts_against_its_delay() -> None:
    async def scenario() -> None:
        driver = Driver(AdmissionLimits(max_in_flight=1, max_queue_delay_seconds=0.5))
        holder, _ = driver.start(tag="holder")
        await _settle()
        loop = asyncio.get_running_loop()
        answer = Answer()
        started = loop.time()
        # Waited 0.45 s for the loop already: 0.05 s of queue left, not 0.5.
        await driver.middleware(
            _arrived(_scope(V1_PREDICT, tag="late"), 0.45), _receive, answer.send
        )
        waited = loop.time() - started
        assert answer.status == 503 and driver.shed == [(V1_PREDICT, "queue_timeout")]
        assert 0.03 <= waited < 0.4
        driver.app.finish(V1_PREDICT + "?holder")
        await holder

    _run(scenario)


def _wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        threading.Event().wait(0.01)
    raise AssertionError("timed out")


@contextlib.contextmanager
def _bounded_server(app: Any) -> Iterator[tuple[uvicorn.Server, int]]:
    """``app`` under uvicorn with the service's bounded HTTP protocol, on a thread:
    the server and its port, once it is started."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=protocol_factory(HttpLimits()),
        loop="asyncio", log_level="warning", lifespan="off",
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        _wait_for(lambda: server.started)
        yield server, port
    finally:
        server.should_exit = True
        thread.join(10)


def test_the_http_protocol_stamps_each_request_with_its_arrival() -> None:
    seen: list[float] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        arrival = scope["extensions"][ARRIVAL_EXTENSION]["loop_time"]
        seen.append(asyncio.get_running_loop().time() - arrival)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with _bounded_server(app) as (_, port):
        for _ in range(3):
            assert httpx.post(f"http://127.0.0.1:{port}/x", content=b"{}").status_code == 200
    assert len(seen) == 3 and all(0 <= waited < 5 for waited in seen)


def test_a_waiter_whose_client_disconnects_leaves_the_queue_unanswered() -> None:
    async def scenario() -> None:
        driver = Driver(AdmissionLimits(max_in_flight=1, max_queue_delay_seconds=60.0))
        holder, _ = driver.start(tag="holder")
        await _settle()
        orphan_scope = _arrived(_scope(V1_PREDICT, tag="orphan"), 0.0)
        orphan_answer = Answer()
        orphan = asyncio.ensure_future(
            driver.middleware(orphan_scope, _receive, orphan_answer.send)
        )
        live, live_answer = driver.start(tag="live")
        await _settle()
        assert driver.controller.queue_depth == 2
        arrival = orphan_scope["extensions"][ARRIVAL_EXTENSION]
        arrival["lost"] = True  # what the HTTP protocol does on connection_lost
        arrival.pop("on_lost")()
        await orphan
        assert orphan_answer.status is None and orphan_answer.body == b""
        assert driver.shed == [(V1_PREDICT, "client_gone")]
        assert driver.controller.queue_depth == 1 and driver.depths[-1] == 1
        driver.app.finish(V1_PREDICT + "?holder")
        driver.app.finish(V1_PREDICT + "?live")
        await asyncio.gather(holder, live)
        assert live_answer.status == 200  # the slot went past the orphan
        assert driver.app.arrived == [V1_PREDICT + "?holder", V1_PREDICT + "?live"]
        assert driver.controller.in_flight == 0 and "on_lost" not in arrival

    _run(scenario)


def test_a_request_whose_client_left_before_it_ran_is_dropped_with_slots_free() -> None:
    async def scenario() -> None:
        driver = Driver(AdmissionLimits(max_in_flight=8))
        scope = _arrived(_scope(V1_PREDICT), 0.0)
        scope["extensions"][ARRIVAL_EXTENSION]["lost"] = True
        answer = Answer()
        await driver.middleware(scope, _receive, answer.send)
        assert answer.status is None and driver.app.arrived == []
        assert driver.shed == [(V1_PREDICT, "client_gone")]
        assert driver.controller.in_flight == 0

    _run(scenario)


def test_the_http_protocol_drops_a_queued_request_whose_connection_closes() -> None:
    """Live: uvicorn with the bounded protocol. One request holds the only slot, a second
    waits in the queue and its client closes the connection: the second leaves the queue
    and never reaches the app, and the slot goes to the next request."""
    app = HeldApp()
    shed: list[ShedReason] = []
    middleware = AdmissionMiddleware(
        app,
        AdmissionLimits(max_in_flight=1, max_queue_delay_seconds=60.0),
        on_shed=lambda path, reason, seconds: shed.append(reason),
    )
    controller = middleware.controller
    assert controller is not None
    request = f"POST {V1_PREDICT}?%s HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{{}}"
    with _bounded_server(middleware) as (server, port), ThreadPoolExecutor(2) as pool:

        def finish(tag: str) -> None:  # the app's gates live on the server's loop
            loop = server.servers[0].get_loop()
            loop.call_soon_threadsafe(app.finish, V1_PREDICT + "?" + tag)

        url = f"http://127.0.0.1:{port}{V1_PREDICT}"
        holder = pool.submit(httpx.post, url + "?holder", content=b"{}", timeout=30)
        _wait_for(lambda: app.arrived == [V1_PREDICT + "?holder"])
        orphan = socket.create_connection(("127.0.0.1", port))
        orphan.sendall((request % "orphan").encode())
        _wait_for(lambda: controller.queue_depth == 1)
        orphan.close()
        _wait_for(lambda: controller.queue_depth == 0)
        assert shed == ["client_gone"] and controller.in_flight == 1
        live = pool.submit(httpx.post, url + "?live", content=b"{}", timeout=30)
        _wait_for(lambda: controller.queue_depth == 1)
        finish("holder")
        finish("live")
        assert holder.result(30).status_code == 200
        assert live.result(30).status_code == 200
    assert app.arrived == [V1_PREDICT + "?holder", V1_PREDICT + "?live"]
    assert controller.in_flight == 0


def test_a_waiter_admitted_in_time_is_served() -> None:
    async def scenario() -> None:
        driver = Driver(AdmissionLimits(max_in_flight=1, max_queue_delay_seconds=60.0))
        holder, _ = driver.start(tag="holder")
        await _settle()
        waiter, answer = driver.start(tag="waiter")
        await _settle()
        driver.app.finish(V1_PREDICT + "?holder")
        driver.app.finish(V1_PREDICT + "?waiter")
        await asyncio.gather(holder, waiter)
        assert answer.status == 200 and driver.shed == []

    _run(scenario)


@pytest.mark.parametrize(
    ("path", "v2"),
    [(V1_PREDICT, False), (V2_INFER, True), (V2_VERSIONED_INFER, True)],
    ids=["v1", "v2", "v2-versioned"],
)
def test_a_shed_request_is_503_overloaded_with_retry_after_in_its_protocols_shape(
    path: str, v2: bool
) -> None:
    async def scenario() -> None:
        driver = Driver(AdmissionLimits(max_in_flight=1, max_queue=1))
        held = [driver.start(path, tag=str(i))[0] for i in range(2)]
        await _settle()
        task, answer = driver.start(path, tag="excess")
        await task
        assert answer.status == 503
        assert answer.headers["retry-after"] == "1"
        assert answer.headers[ERROR_CODE_HEADER.lower()] == "overloaded"
        assert answer.headers["content-type"] == "application/json"
        assert int(answer.headers["content-length"]) == len(answer.body)
        for name, value in SECURITY_HEADERS:
            assert answer.headers[name.decode()] == value.decode()
        body = orjson.loads(answer.body)
        if v2:
            assert set(body) == {"error"} and "overloaded" in body["error"]
        else:
            assert body["error"]["code"] == "overloaded" and body["error"]["message"]
        for i in range(2):
            driver.app.finish(f"{path}?{i}")
        await asyncio.gather(*held)

    _run(scenario)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/health/live"),
        ("GET", "/v2/health/ready"),
        ("GET", "/v2"),
        ("GET", "/v1/models"),
        ("GET", "/v2/models/toy"),
        ("GET", "/v2/models/toy/ready"),
        ("GET", V1_PREDICT),  # not a POST: not inference (the router answers 405)
        ("POST", "/admin/tenants"),
        ("POST", "/v2/repository/index"),
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
        ("POST", "/v1/models/toy/predict/extra"),
    ],
)
def test_requests_other_than_inference_pass_a_saturated_worker(method: str, path: str) -> None:
    async def scenario() -> None:
        driver = Driver(AdmissionLimits(max_in_flight=1, max_queue=1))
        held = [driver.start(tag=str(i))[0] for i in range(2)]
        await _settle()
        task, answer = driver.start(path, method, tag="other")
        await _settle()
        assert driver.app.arrived[-1] == f"{path}?other"  # reached the app, not held
        driver.app.finish(f"{path}?other")
        await task
        assert answer.status == 200 and driver.shed == []
        assert driver.controller.queue_depth == 1
        for i in range(2):
            driver.app.finish(f"{V1_PREDICT}?{i}")
        await asyncio.gather(*held)

    _run(scenario)


def test_limits_off_hold_nothing() -> None:
    async def scenario() -> None:
        driver = Driver(AdmissionLimits())
        assert driver.middleware.controller is None
        tasks = [driver.start(tag=str(i))[0] for i in range(50)]
        await _settle()
        assert len(driver.app.arrived) == 50
        for i in range(50):
            driver.app.finish(f"{V1_PREDICT}?{i}")
        await asyncio.gather(*tasks)

    _run(scenario)


def test_a_cancelled_waiter_leaves_the_queue_and_a_cancelled_request_frees_its_slot() -> None:
    async def scenario() -> None:
        driver = Driver(AdmissionLimits(max_in_flight=1))
        holder, _ = driver.start(tag="holder")
        await _settle()
        waiter, _ = driver.start(tag="waiter")
        await _settle()
        assert driver.controller.queue_depth == 1
        waiter.cancel()
        await _settle()
        assert driver.controller.queue_depth == 0
        holder.cancel()
        await _settle()
        assert driver.controller.in_flight == 0
        late, answer = driver.start(tag="late")
        await _settle()
        driver.app.finish(V1_PREDICT + "?late")
        await late
        assert answer.status == 200

    _run(scenario)


def test_a_waiter_handed_a_slot_counts_in_the_backlog_until_it_runs() -> None:
    # Woken waiters run on the loop's next turn, together: the backlog lets them share a
    # model call (service/runtime/batching.py), and it must balance whatever happens.
    async def scenario() -> None:
        backlog = RequestBacklog()
        controller = AdmissionController(AdmissionLimits(max_in_flight=1), backlog=backlog)
        assert await controller.acquire() is None  # the holder: admitted at once
        waiters = [asyncio.ensure_future(controller.acquire()) for _ in range(3)]
        await _settle()
        assert backlog.waiting == 0 and controller.queue_depth == 3
        controller.release()  # the holder is done: its slot passes to the first waiter
        assert backlog.waiting == 1 and not waiters[0].done()
        await _settle()
        assert waiters[0].result() is None and backlog.waiting == 0
        controller.release()  # handed to the second, which is cancelled before it runs
        waiters[1].cancel()
        await _settle()
        assert backlog.waiting == 0
        assert waiters[2].result() is None  # the cancelled one passed its slot on
        controller.release()
        assert controller.in_flight == 0 and backlog.waiting == 0

    _run(scenario)


def test_negative_limits_raise() -> None:
    for kwargs in (
        {"max_in_flight": -1},
        {"max_in_flight": 1, "max_queue": -1},
        {"max_in_flight": 1, "max_queue_delay_seconds": -0.5},
    ):
        with pytest.raises(ValueError):
            AdmissionLimits(**kwargs)


def test_shed_requests_are_counted_by_reason_and_the_queue_depth_is_a_gauge() -> None:
    metrics = ServiceMetrics()

    def value(name: str, **labels: str) -> float:
        found = metrics.registry.get_sample_value(name, labels)
        return 0.0 if found is None else found

    async def scenario() -> None:
        app = HeldApp()
        middleware = AdmissionMiddleware(
            app,
            AdmissionLimits(max_in_flight=1, max_queue=1, max_queue_delay_seconds=0.01),
            on_shed=lambda path, reason, seconds: metrics.observe_shed(reason),
            on_depth=metrics.admission_queue_depth.set,
        )
        holder = asyncio.ensure_future(middleware(_scope(V1_PREDICT), _receive, Answer().send))
        await _settle()
        waiter = asyncio.ensure_future(middleware(_scope(V1_PREDICT), _receive, Answer().send))
        await _settle()
        assert value("dynanoise_admission_queue_depth") == 1
        await middleware(_scope(V1_PREDICT), _receive, Answer().send)  # queue full
        await waiter  # past the delay
        assert value("dynanoise_requests_shed_total", reason="queue_full") == 1
        assert value("dynanoise_requests_shed_total", reason="queue_timeout") == 1
        assert value("dynanoise_admission_queue_depth") == 0
        app.finish(V1_PREDICT + "?")
        await holder

    _run(scenario)


# Through the real app: one request holds the only slot (its inference blocks in the
# thread pool), one waits in the queue, and the next is answered 503 at once.


@pytest.fixture
def admission_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "admission_max_in_flight": 1,
            "admission_max_queue": 1,
            "admission_max_queue_delay_ms": 0.0,
            "tenant_cache_seconds": 0.0,  # every inference in the thread pool
        }
    )


def test_an_overloaded_app_answers_503_instead_of_waiting(
    admission_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(admission_settings)
    entered, release = threading.Event(), threading.Event()
    plane = app.state.dataplane
    infer = plane.infer
    calls = 0

    def held_infer(call: Any, tenant: Any = None) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:  # the first request holds its slot until the test lets it go
            entered.set()
            release.wait(30)
        return infer(call, tenant)

    with TestClient(app) as client, ThreadPoolExecutor(2) as pool:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        created = client.post("/admin/tenants", json={"name": "acme"}, headers=admin)
        key = {"Authorization": f"Bearer {created.json()['api_key']}"}
        monkeypatch.setattr(plane, "infer", held_infer)
        body = {"instances": [ROW_TOY]}

        holder = pool.submit(client.post, V1_PREDICT, json=body, headers=key)
        assert entered.wait(30)
        controller = app.middleware_stack.controller  # type: ignore[union-attr]
        queued = pool.submit(client.post, V1_PREDICT, json=body, headers=key)
        _wait_for(lambda: controller.queue_depth == 1, seconds=30.0)

        shed = client.post(V1_PREDICT, json=body, headers=key)
        v2_shed = client.post(
            V2_INFER,
            json={"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                              "data": ROW_TOY}]},
            headers=key,
        )  # fmt: skip
        live = client.get("/v2/health/live")
        assert not holder.done()  # answered while the slot is still held

        release.set()
        assert holder.result(30).status_code == 200
        assert queued.result(30).status_code == 200

    assert shed.status_code == 503 and shed.headers["Retry-After"] == "1"
    assert shed.json()["error"]["code"] == "overloaded"
    assert v2_shed.status_code == 503 and set(v2_shed.json()) == {"error"}
    assert v2_shed.headers[ERROR_CODE_HEADER] == "overloaded"
    assert live.status_code == 200
    text = scrape(client)
    assert 'dynanoise_requests_shed_total{reason="queue_full"} 2.0' in text
    assert 'dynanoise_requests_total{code="503",model="-",tenant="-"} 2.0' in text


def test_the_app_counts_a_request_dropped_for_its_lost_client_as_499(
    admission_settings: Settings,
) -> None:
    app = create_app(admission_settings)
    with TestClient(app) as client:
        scope = {**_scope(V1_PREDICT), "extensions": {ARRIVAL_EXTENSION: {"loop_time": 0.0}}}
        scope["extensions"][ARRIVAL_EXTENSION]["lost"] = True
        answer = Answer()

        async def dropped() -> None:
            assert app.middleware_stack is not None
            await app.middleware_stack(scope, _receive, answer.send)

        asyncio.run(dropped())
        assert answer.status is None
        text = scrape(client)
    assert 'dynanoise_requests_shed_total{reason="client_gone"} 1.0' in text
    assert 'dynanoise_requests_total{code="499",model="-",tenant="-"} 1.0' in text


# The benchmark's overload measurement (bench/harness/overload.py) counts the 503s apart.


def test_overload_point_tells_shed_answers_from_other_errors() -> None:
    result = LoadResult(
        concurrency=64, requests=1000, duration_s=2.0, errors=260, p50_ms=10.0,
        p90_ms=20.0, p99_ms=45.0, status_503=250,
    )  # fmt: skip
    point = overload_point(result)
    assert point["shed_fraction"] == 0.25
    assert point["other_errors"] == 10
    assert point["served_rps"] == 370.0
    assert point["p99_over_p50"] == 4.5


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk")
def test_wrk_counts_the_503_answers_of_a_server_that_sheds_every_other_request() -> None:
    answered = {"ok": 0, "shed": 0}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        shed = (answered["ok"] + answered["shed"]) % 2 == 1
        answered["shed" if shed else "ok"] += 1
        await send({"type": "http.response.start", "status": 503 if shed else 200,
                    "headers": [(b"content-length", b"2")]})  # fmt: skip
        await send({"type": "http.response.body", "body": b"{}"})

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        _wait_for(lambda: server.started)
        payload = Payload(b'{"instances": [[0.5]]}', {"Content-Type": "application/json"})
        points = measure_overload(
            f"http://127.0.0.1:{port}/v1/models/toy/predict",
            payload,
            concurrencies=[2],
            duration_s=1.0,
        )
    finally:
        server.should_exit = True
        thread.join(10)
    point = points[2]
    assert point["requests"] > 0 and point["other_errors"] == 0
    shed = round(point["shed_fraction"] * point["requests"])
    assert abs(shed - answered["shed"]) <= 2  # wrk stops with a few answers in flight
    assert 0.4 < point["shed_fraction"] < 0.6
