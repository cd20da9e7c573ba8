// @cowatch/client against a real stack: Envoy (gRPC-web) → services → PostgreSQL.
// Run by tests/e2e/test_typescript_sdk.py, which starts the stack and passes COWATCH_API_URL, HOST_TOKEN,
// GUEST_TOKEN (and a HOST_USER id). Standalone: `npm test` with those variables set (e.g. against `make run`).
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  Code,
  CowatchError,
  Event_Visibility,
  createCowatchClient,
  hasReason,
  timestampFromDate,
} from "../dist/index.js";

const baseUrl = process.env.COWATCH_API_URL;
const hostToken = process.env.HOST_TOKEN;
const guestToken = process.env.GUEST_TOKEN;
if (!baseUrl || !hostToken || !guestToken) throw new Error("set COWATCH_API_URL, HOST_TOKEN and GUEST_TOKEN");

const host = createCowatchClient({ baseUrl, token: () => hostToken });
const guest = createCowatchClient({ baseUrl, token: () => guestToken });
const anonymous = createCowatchClient({ baseUrl });
const city = `SdkCity-${crypto.randomUUID().slice(0, 8)}`;
const UUID4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

// Each event on its own day (a guest's bookings must not overlap in time), far from other runs' events.
let day = 30 + Math.floor(Math.random() * 600);
function newEvent(overrides = {}) {
  const start = new Date(Date.now() + day++ * 86_400_000);
  return {
    film: { id: "tt0069293", title: "Solaris" },
    title: "SDK night",
    startTime: timestampFromDate(start),
    timeZone: "Europe/Berlin",
    duration: { seconds: 7200n },
    place: { name: "Living room", address: "Torstr. 1", city },
    capacity: 4,
    visibility: Event_Visibility.PUBLIC,
    ...overrides,
  };
}

/** An inner interceptor that fails the first `n` attempts with UNAVAILABLE before they reach the network. */
function flaky(n, seen) {
  let left = n;
  return (next) => async (req) => {
    seen.push({ method: req.method.name, requestId: req.message.requestId });
    if (left-- > 0) throw new CowatchError({ code: Code.Unavailable, message: "injected" });
    return next(req);
  };
}

test("create, read anonymously, and page through a filtered list", async () => {
  const created = [];
  for (let i = 0; i < 3; i++) created.push(await host.events.createEvent({ event: newEvent({ title: `SDK ${i}` }) }));
  const fetched = await anonymous.events.getEvent({ name: created[0].name });
  assert.equal(fetched.title, "SDK 0");
  assert.equal(fetched.place?.city, city);
  const seen = [];
  for await (const e of anonymous.listEvents({ city, pageSize: 1 })) seen.push(e.name);
  assert.deepEqual(seen.sort(), created.map((e) => e.name).sort());
});

test("a write gets a UUID4 request id, reused on retry after UNAVAILABLE", async () => {
  const event = await host.events.createEvent({ event: newEvent() });
  const seen = [];
  const client = createCowatchClient({
    baseUrl,
    token: () => guestToken,
    interceptors: [flaky(2, seen)],
    retry: { baseDelayMs: 1 },
  });
  const booking = await client.bookings.createBooking({ booking: { event: event.name, seats: 2 } });
  assert.equal(seen.length, 3);
  assert.match(seen[0].requestId, UUID4);
  assert.ok(seen.every((s) => s.requestId === seen[0].requestId), JSON.stringify(seen));
  const again = await host.events.getEvent({ name: event.name });
  assert.equal(again.seatsTaken, 2, "the retried booking took its seats once");
  assert.equal(booking.seats, 2);
});

test("a write without a request id is not retried; UNAVAILABLE surfaces as a typed error", async () => {
  const event = await host.events.createEvent({ event: newEvent() });
  const seen = [];
  const client = createCowatchClient({ baseUrl, token: () => hostToken, interceptors: [flaky(1, seen)] });
  await assert.rejects(client.events.completeEvent({ name: event.name }), (err) => {
    assert.ok(err instanceof CowatchError);
    assert.equal(err.code, Code.Unavailable);
    return true;
  });
  assert.equal(seen.length, 1);
});

test("reads are retried on UNAVAILABLE", async () => {
  const seen = [];
  const client = createCowatchClient({ baseUrl, interceptors: [flaky(1, seen)], retry: { baseDelayMs: 1 } });
  await client.events.listEvents({ city, pageSize: 1 });
  assert.equal(seen.length, 2);
});

test("business refusals carry ErrorInfo.reason and metadata", async () => {
  const event = await host.events.createEvent({ event: newEvent({ capacity: 1 }) });
  await assert.rejects(host.bookings.createBooking({ booking: { event: event.name } }), (err) => {
    assert.ok(hasReason(err, "HOST_CANNOT_BOOK"), String(err));
    assert.equal(err.code, Code.FailedPrecondition);
    return true;
  });
  await guest.bookings.createBooking({ booking: { event: event.name } });
  const third = createCowatchClient({ baseUrl, token: () => process.env.THIRD_TOKEN });
  await assert.rejects(third.bookings.createBooking({ booking: { event: event.name } }), (err) => {
    assert.ok(hasReason(err, "EVENT_SOLD_OUT"), String(err));
    assert.notEqual(err.code, Code.Unavailable); // a refusal: never retried
    assert.equal(err.info.seats_available, "0");
    assert.equal(err.domain, "cowatch.io");
    return true;
  });
  await assert.rejects(anonymous.events.getEvent({ name: "events/00000000-0000-0000-0000-000000000000" }), (err) => {
    assert.ok(hasReason(err, "EVENT_NOT_FOUND"), String(err));
    assert.equal(err.code, Code.NotFound);
    return true;
  });
});

test("invalid input comes back as field violations", async () => {
  await assert.rejects(host.events.createEvent({ event: newEvent({ capacity: 0, title: "" }) }), (err) => {
    assert.ok(err instanceof CowatchError);
    assert.equal(err.code, Code.InvalidArgument);
    const fields = err.violations.map((v) => v.field);
    assert.ok(fields.includes("event.capacity"), fields.join());
    assert.ok(fields.includes("event.title"), fields.join());
    assert.ok(err.violation("event.capacity").description.length > 0);
    return true;
  });
});

test("every call carries a deadline (default and per call)", async () => {
  const timeouts = [];
  const recording = (input, init) => {
    timeouts.push(new Headers(init?.headers).get("grpc-timeout"));
    return fetch(input, init);
  };
  const client = createCowatchClient({ baseUrl, fetch: recording, timeoutMs: 7000 });
  await client.events.listEvents({ pageSize: 1 });
  await client.events.listEvents({ pageSize: 1 }, { timeoutMs: 1500 });
  assert.equal(timeouts.length, 2);
  assert.match(timeouts[0], /^\d+m$/);
  assert.ok(Number.parseInt(timeouts[0]) > 6000 && Number.parseInt(timeouts[0]) <= 7000, timeouts[0]);
  assert.ok(Number.parseInt(timeouts[1]) <= 1500, timeouts[1]);
});
