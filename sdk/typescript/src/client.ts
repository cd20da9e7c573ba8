/**
 * `createCowatchClient`: the three cowatch services over gRPC-web (Envoy), with a bearer token, request ids on
 * writes, safe retries, default deadlines and typed errors.
 *
 * ```ts
 * const cowatch = createCowatchClient({ baseUrl: "http://localhost:8080", token: () => myToken });
 * const event = await cowatch.events.getEvent({ name: "events/…" });
 * for await (const e of cowatch.listEvents({ city: "Berlin" })) console.log(e.title);
 * ```
 */
import { createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { EventService, ListEventsRequestSchema, ListEventGuestsRequestSchema } from "./gen/cowatch/event/v1/service_pb.js";
import type { Event, Guest } from "./gen/cowatch/event/v1/resources_pb.js";
import { BookingService, ListBookingsRequestSchema } from "./gen/cowatch/booking/v1/service_pb.js";
import type { Booking } from "./gen/cowatch/booking/v1/resources_pb.js";
import {
  ListHeldEventsRequestSchema,
  ListReviewsRequestSchema,
  ReviewService,
} from "./gen/cowatch/review/v1/service_pb.js";
import type { HeldEvent, Review } from "./gen/cowatch/review/v1/resources_pb.js";
import { bearerToken, requestIds, retries, typedErrors, type RetryOptions, type TokenSource } from "./interceptors.js";
import { paginate } from "./paginate.js";

/** Options of {@link createCowatchClient}. */
export interface CowatchClientOptions {
  /** Where Envoy listens (`http://localhost:8080`), or the page's own origin. */
  readonly baseUrl: string;
  /** The bearer token for each call (omit, or return nothing, for anonymous reads). */
  readonly token?: TokenSource;
  /** Deadline of each call in ms unless the call passes `timeoutMs` (default 10 000). */
  readonly timeoutMs?: number;
  /** Retries of UNAVAILABLE for idempotent calls and writes with a request id. */
  readonly retry?: RetryOptions;
  /** Extra interceptors, run inside the built-in ones (closest to the network). */
  readonly interceptors?: Interceptor[];
  /** A `fetch` to use instead of the global one. */
  readonly fetch?: typeof globalThis.fetch;
  /** Makes request ids (default `crypto.randomUUID`). */
  readonly newRequestId?: () => string;
}


/** The cowatch API: one Connect client per service, plus async iterators over the paginated lists. */
export interface CowatchClient {
  readonly events: Client<typeof EventService>;
  readonly bookings: Client<typeof BookingService>;
  readonly reviews: Client<typeof ReviewService>;
  /** The transport the clients share. */
  readonly transport: Transport;
  /** Every event matching the filters, page after page (ListEvents). */
  listEvents(filter?: MessageInitShape<typeof ListEventsRequestSchema>): AsyncIterable<Event>;
  /** The guest list of an event the caller hosts (ListEventGuests). */
  listEventGuests(request: MessageInitShape<typeof ListEventGuestsRequestSchema>): AsyncIterable<Guest>;
  /** The caller's bookings (ListBookings). */
  listBookings(request?: MessageInitShape<typeof ListBookingsRequestSchema>): AsyncIterable<Booking>;
  /** Reviews matching the filters (ListReviews). */
  listReviews(request?: MessageInitShape<typeof ListReviewsRequestSchema>): AsyncIterable<Review>;
  /** The events a host held, each with its average rating (ListHeldEvents). */
  listHeldEvents(request: MessageInitShape<typeof ListHeldEventsRequestSchema>): AsyncIterable<HeldEvent>;
}

/** Builds a {@link CowatchClient} over Connect's gRPC-web transport. */
export function createCowatchClient(options: CowatchClientOptions): CowatchClient {
  const transport = createGrpcWebTransport({
    baseUrl: options.baseUrl,
    defaultTimeoutMs: options.timeoutMs ?? 10_000,
    fetch: options.fetch,
    interceptors: [
      typedErrors(),
      requestIds(options.newRequestId),
      retries(options.retry),
      ...(options.token ? [bearerToken(options.token)] : []),
      ...(options.interceptors ?? []),
    ],
  });
  const events = createClient(EventService, transport);
  const bookings = createClient(BookingService, transport);
  const reviews = createClient(ReviewService, transport);
  return {
    events,
    bookings,
    reviews,
    transport,
    listEvents: (filter = {}) => paginate((r) => events.listEvents(r), filter, (res) => res.events),
    listEventGuests: (request) => paginate((r) => events.listEventGuests(r), request, (res) => res.guests),
    listBookings: (request = {}) => paginate((r) => bookings.listBookings(r), request, (res) => res.bookings),
    listReviews: (request = {}) => paginate((r) => reviews.listReviews(r), request, (res) => res.reviews),
    listHeldEvents: (request) => paginate((r) => reviews.listHeldEvents(r), request, (res) => res.heldEvents),
  };
}
