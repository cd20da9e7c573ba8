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

/** A failed cowatch call. `reason` is stable and meant to be switched on; `message` is for humans. */
export class CowatchError extends Error {
  override readonly name = "CowatchError";
  /** The gRPC status code (`Code.NotFound`, `Code.FailedPrecondition`...). */
  readonly code: Code;
  /** `ErrorInfo.reason` (`EVENT_SOLD_OUT`, `ETAG_MISMATCH`...); the code's name when the server sent none. */
  readonly reason: string;
  /** `ErrorInfo.domain` (`cowatch.io`), empty when absent. */
  readonly domain: string;
  /** `ErrorInfo.metadata`: facts about the refusal (`seats_available`, `event`...). */
  readonly metadata: Readonly<Record<string, string>>;
  /** `BadRequest.field_violations`, empty unless the request was invalid. */
  readonly violations: readonly FieldViolation[];
  /** The server's message without the `[code]` prefix. */
  readonly rawMessage: string;

  constructor(init: {
    code: Code;
    message: string;
    reason?: string;
    domain?: string;
    metadata?: Record<string, string>;
    violations?: FieldViolation[];
    cause?: unknown;
  }) {
    super(init.message, { cause: init.cause });
    this.code = init.code;
    this.rawMessage = init.message;
    this.reason = init.reason || Code[init.code] || "UNKNOWN";
    this.domain = init.domain ?? "";
    this.metadata = init.metadata ?? {};
    this.violations = init.violations ?? [];
  }

  /** The violation for `field` (exact path), if any. */
  violation(field: string): FieldViolation | undefined {
    return this.violations.find((v) => v.field === field);
  }

  /** Wraps anything a Connect call threw; a `CowatchError` is returned as it is. */
  static from(err: unknown): CowatchError {
    if (err instanceof CowatchError) return err;
    const ce = ConnectError.from(err);
    const info = ce.findDetails(ErrorInfoSchema)[0];
    const bad = ce.findDetails(BadRequestSchema)[0];
    return new CowatchError({
      code: ce.code,
      message: ce.rawMessage,
      reason: info?.reason,
      domain: info?.domain,
      metadata: info ? { ...info.metadata } : {},
      violations: (bad?.fieldViolations ?? []).map((v) => ({ field: v.field, description: v.description })),
      cause: ce,
    });
  }
}

/** Whether `err` is a {@link CowatchError} with one of `reasons`. */
export function hasReason(err: unknown, ...reasons: string[]): err is CowatchError {
  return err instanceof CowatchError && reasons.includes(err.reason);
}
