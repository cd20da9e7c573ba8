/**
 * @cowatch/client — the cowatch API for TypeScript over gRPC-web.
 *
 * - {@link createCowatchClient}: Connect clients for EventService, BookingService and ReviewService with a
 *   bearer token, a UUID4 `request_id` on every write (reused on retry), retries of UNAVAILABLE only where safe,
 *   default deadlines and {@link CowatchError}s.
 * - The generated messages and enums are re-exported below; everything generated is also importable from
 *   `@cowatch/client/gen/<path>_pb`.
 */
export { createCowatchClient, type CowatchClient, type CowatchClientOptions } from "./client.js";
export { CowatchError, Code, hasReason, type FieldViolation } from "./errors.js";
export {
  bearerToken,
  isIdempotent,
  requestIds,
  retries,
  typedErrors,
  type RetryOptions,
  type TokenSource,
} from "./interceptors.js";
export { paginate } from "./paginate.js";
export * from "./gen/cowatch/event/v1/resources_pb.js";
export * from "./gen/cowatch/event/v1/service_pb.js";
export * from "./gen/cowatch/booking/v1/resources_pb.js";
export * from "./gen/cowatch/booking/v1/service_pb.js";
export * from "./gen/cowatch/review/v1/resources_pb.js";
export * from "./gen/cowatch/review/v1/service_pb.js";
export * from "./gen/cowatch/type/v1/rating_pb.js";
export { create, toJson, fromJson } from "@bufbuild/protobuf";
export { timestampDate, timestampFromDate, timestampNow, durationFromMs } from "@bufbuild/protobuf/wkt";
