/**
 * The behaviour every caller would otherwise get wrong, as Connect interceptors (outermost first):
 * typed errors, a request id on writes, retries of what is safe to retry, the bearer token.
 */
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import type { DescMethod } from "@bufbuild/protobuf";
import { CowatchError } from "./errors.js";

/** Returns the bearer token for the next call, or nothing for an anonymous call. */
export type TokenSource = () => string | undefined | null | Promise<string | undefined | null>;

/** How UNAVAILABLE calls are retried. */
export interface RetryOptions {
  /** Attempts in all, the first included (default 3; 1 disables retries). */
  readonly maxAttempts?: number;
  /** First back-off in ms, doubled per attempt with full jitter (default 50). */
  readonly baseDelayMs?: number;
  /** Largest back-off in ms (default 1000). */
  readonly maxDelayMs?: number;
}

/** Reads (Get*, List*) and methods the protos mark side-effect free or idempotent. */
export function isIdempotent(method: DescMethod): boolean {
  // MethodOptions.IdempotencyLevel: 1 = NO_SIDE_EFFECTS, 2 = IDEMPOTENT.
  return method.idempotency === 1 || method.idempotency === 2 || /^(Get|List)/.test(method.name);
}

function hasRequestIdField(method: DescMethod): boolean {
  return method.input.fields.some((f) => f.name === "request_id");
}

/** Sends `authorization: Bearer <token>` when the token source has one. */
export function bearerToken(token: TokenSource): Interceptor {
  return (next) => async (req) => {
    const value = await token();
    if (value) req.header.set("authorization", `Bearer ${value}`);
    return next(req);
  };
}

/** Fills an empty `request_id` of every write with a fresh UUID4, before the retry loop: retries reuse it. */
export function requestIds(newId: () => string = () => globalThis.crypto.randomUUID()): Interceptor {
  return (next) => async (req) => {
    if (req.stream || isIdempotent(req.method) || !hasRequestIdField(req.method)) return next(req);
    const message = req.message as { requestId?: string };
    if (message.requestId) return next(req);
    const withId = { ...req.message, requestId: newId() } as unknown as typeof req.message;
    return next({ ...req, message: withId });
  };
}

/**
 * Retries UNAVAILABLE only, and only calls that are safe to repeat: idempotent methods, and writes that carry a
 * request id (the server answers a repeat with the first result). Everything else fails at once.
 */
export function retries(options: RetryOptions = {}): Interceptor {
  const attempts = Math.max(1, options.maxAttempts ?? 3);
  const base = options.baseDelayMs ?? 50;
  const cap = options.maxDelayMs ?? 1000;
  return (next) => async (req) => {
    const requestId = (req.message as { requestId?: string }).requestId;
    const safe = !req.stream && (isIdempotent(req.method) || Boolean(requestId));
    for (let attempt = 1; ; attempt++) {
      try {
        return await next(req);
      } catch (err) {
        const code = ConnectError.from(err).code;
        if (!safe || code !== Code.Unavailable || attempt >= attempts || req.signal.aborted) throw err;
        const delay = Math.random() * Math.min(cap, base * 2 ** (attempt - 1));
        await new Promise((resolve) => setTimeout(resolve, delay));
      }
    }
  };
}

/** Turns every failure into a {@link CowatchError}. */
export function typedErrors(): Interceptor {
  return (next) => async (req) => {
    try {
      return await next(req);
    } catch (err) {
      throw CowatchError.from(err);
    }
  };
}
