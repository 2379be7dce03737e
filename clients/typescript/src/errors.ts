import type { ErrorBody, FailedRecord } from "./types.js";

/**
 * Base class of every error this client throws on purpose. `code` is the
 * server's error code (`lease_lost`, `fingerprint_mismatch`, …) or one of the
 * client's own (`invalid_key`, `wait_timeout`, `network_error`,
 * `invalid_response`); `status` is the HTTP status, or 0 when no answer was
 * involved; `body` is the server's error body when there was one.
 */
export class OnceflightError extends Error {
  readonly code: string;
  readonly status: number;
  readonly body: ErrorBody | undefined;

  constructor(code: string, message: string, options: { status?: number; body?: ErrorBody; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "OnceflightError";
    this.code = code;
    this.status = options.status ?? 0;
    this.body = options.body;
  }
}

/**
 * The job failed, now or on an earlier attempt, and no lease can be granted
 * now. `record` is the failed record; `retryAfterMs` is the time until a retry
 * will be allowed, or undefined when none will be (non-retryable failure or
 * attempts exhausted). When this call's own job threw, `cause` is what it threw.
 */
export class JobFailedError extends OnceflightError {
  readonly record: FailedRecord;
  readonly retryAfterMs: number | undefined;

  constructor(record: FailedRecord, options: { cause?: unknown } = {}) {
    const message = `job for key ${JSON.stringify(record.key)} failed on attempt ${record.attempt}: ${record.error?.message ?? "unknown error"}`;
    super("job_failed", message, { status: 200, cause: options.cause });
    this.name = "JobFailedError";
    this.record = record;
    this.retryAfterMs = record.retry_after_ms ?? undefined;
  }
}

/** The key's record was created with another kind or fingerprint (422). */
export class FingerprintMismatchError extends OnceflightError {
  constructor(message: string, options: { status?: number; body?: ErrorBody } = {}) {
    super("fingerprint_mismatch", message, options);
    this.name = "FingerprintMismatchError";
  }
}

/**
 * A fenced call (heartbeat, complete, fail, release) used a token that is no
 * longer the record's current one (409). Only the low-level calls throw it:
 * getOrRun handles a lost lease itself.
 */
export class LeaseLostError extends OnceflightError {
  constructor(message: string, options: { status?: number; body?: ErrorBody } = {}) {
    super("lease_lost", message, options);
    this.name = "LeaseLostError";
  }
}

/**
 * The server answered 503 (`store_unavailable`, `too_many_waiters`) or could
 * not be reached, and kept doing so for the whole retry budget.
 */
export class UnavailableError extends OnceflightError {
  constructor(code: string, message: string, options: { status?: number; body?: ErrorBody; cause?: unknown } = {}) {
    super(code, message, options);
    this.name = "UnavailableError";
  }
}

/**
 * Thrown by a job to say that trying again is pointless: the record is failed
 * with `retryable: false`, so no later attempt is granted. Any error with a
 * `retryable: false` property has the same effect.
 */
export class NonRetryableError extends Error {
  readonly retryable = false;

  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "NonRetryableError";
  }
}

/**
 * What getOrRun rejects with when the caller's signal aborted without a reason
 * of its own; it mimics the DOMException that fetch uses, so code that checks
 * `err.name === "AbortError"` keeps working.
 */
export function abortError(message = "The operation was aborted"): Error {
  const err = new Error(message);
  err.name = "AbortError";
  return err;
}
