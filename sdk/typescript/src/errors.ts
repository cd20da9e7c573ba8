/**
 * Typed errors: every failed call rejects with a {@link CowatchError} carrying the server's
 * `google.rpc.ErrorInfo` reason and metadata and the `google.rpc.BadRequest` field violations,
 * decoded from the `grpc-status-details-bin` trailer.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";

export { Code };

/** One invalid field of a request, as the server names it (`event.capacity`). */
export interface FieldViolation {
  /** Path of the offending field in the request, snake_case as in the protos (`event.place.city`). */
  readonly field: string;
  /** What is wrong with it, in English. */
  readonly description: string;
}

/**
 * A failed cowatch call. `reason` is stable and meant to be switched on; `message` is for humans.
 * It is a `ConnectError` too (Connect's clients let only those through unchanged): `code`, `rawMessage` and
 * `metadata` (the response headers and trailers) are Connect's.
 */
export class CowatchError extends ConnectError {
  // `name` stays "ConnectError": ConnectError's own instanceof check (Symbol.hasInstance) goes by the name for
  // anything not created by ConnectError itself, and Connect's clients wrap whatever fails that check.

  /** A real prototype check: ConnectError's duck-typed one would take every ConnectError for a CowatchError. */
  static override [Symbol.hasInstance](value: unknown): boolean {
    return Function.prototype[Symbol.hasInstance].call(this, value);
  }

  /** `ErrorInfo.reason` (`EVENT_SOLD_OUT`, `ETAG_MISMATCH`...); the code's name when the server sent none. */
  readonly reason: string;
  /** `ErrorInfo.domain` (`cowatch.io`), empty when absent. */
  readonly domain: string;
  /** `ErrorInfo.metadata`: facts about the refusal (`event`, `seats_available`...). */
  readonly info: Readonly<Record<string, string>>;
  /** `BadRequest.field_violations`, empty unless the request was invalid. */
  readonly violations: readonly FieldViolation[];

  constructor(init: {
    code: Code;
    message: string;
    reason?: string;
    domain?: string;
    info?: Record<string, string>;
    violations?: FieldViolation[];
    headers?: HeadersInit;
    cause?: unknown;
  }) {
    super(init.message, init.code, init.headers, undefined, init.cause);
    this.reason = init.reason || Code[init.code] || "Unknown";
    this.domain = init.domain ?? "";
    this.info = init.info ?? {};
    this.violations = init.violations ?? [];
  }

  /** The violation for `field` (exact path, `event.capacity`), if any. */
  violation(field: string): FieldViolation | undefined {
    return this.violations.find((v) => v.field === field);
  }

  /** Wraps anything a Connect call threw; a `CowatchError` is returned as it is. */
  static override from(err: unknown): CowatchError {
    if (err instanceof CowatchError) return err;
    const ce = ConnectError.from(err);
    const info = ce.findDetails(ErrorInfoSchema)[0];
    const bad = ce.findDetails(BadRequestSchema)[0];
    return new CowatchError({
      code: ce.code,
      message: ce.rawMessage,
      reason: info?.reason,
      domain: info?.domain,
      info: info ? { ...info.metadata } : {},
      violations: (bad?.fieldViolations ?? []).map((v) => ({ field: v.field, description: v.description })),
      headers: ce.metadata,
      cause: ce,
    });
  }
}

/** Whether `err` is a {@link CowatchError} with one of `reasons`. */
export function hasReason(err: unknown, ...reasons: string[]): err is CowatchError {
  return err instanceof CowatchError && reasons.includes(err.reason);
}
