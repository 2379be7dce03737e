import {
  abortError,
  FingerprintMismatchError,
  JobFailedError,
  LeaseLostError,
  OnceflightError,
  UnavailableError,
} from "./errors.js";
import type {
  ClaimAcquired,
  ClaimBody,
  ClaimInFlight,
  ClaimResponse,
  ErrorBody,
  FailedRecord,
  HeartbeatResponse,
  ListQuery,
  ListResponse,
  RecordBody,
  StatsResponse,
} from "./types.js";

/** How transient failures (503 answers, network errors) are retried. */
export interface RetryOptions {
  /** Most tries of one call, the first included (default 6). */
  maxAttempts?: number;
  /** Most time one call may spend retrying, from its first try, in ms (default 30000). */
  maxElapsedMs?: number;
  /** First backoff when the server gives no Retry-After, in ms (default 100); it doubles after each try. */
  initialDelayMs?: number;
  /** Cap of that backoff, in ms (default 5000); each wait is jittered between half of it and all of it. */
  maxDelayMs?: number;
}

export interface OnceflightOptions {
  /** The server's base URL, e.g. `http://127.0.0.1:7700`. */
  baseUrl: string;
  /** Bearer token, sent as `Authorization: Bearer <token>` on every /v1 call. */
  token?: string;
  /** Free-form id of this worker, stored on the leases it takes (≤ 128 bytes). */
  owner?: string;
  /** The fetch to use (default: the global fetch); handy to add tracing or to test. */
  fetch?: typeof fetch;
  /** Retry budget of every call; see RetryOptions. */
  retry?: RetryOptions;
  /**
   * Longest one HTTP try may take before it is abandoned and retried, in ms
   * (default 30000). A long-poll gets its wait on top.
   */
  requestTimeoutMs?: number;
}

/** Options of the low-level calls. */
export interface CallOptions {
  /** Aborts the call, including its retries; the call rejects with the signal's reason. */
  signal?: AbortSignal;
}

/** What a job is given. */
export interface JobContext {
  /** The request key. */
  key: string;
  /** This lease's fencing token. */
  token: number;
  /** Leases granted to the record, this one included. */
  attempt: number;
  /** Whether this lease took over a worker whose lease had expired. */
  takeover: boolean;
  /**
   * Aborted when the lease is lost (another worker took over, the record was
   * deleted) or when every caller waiting on this job has gone away. The job
   * should stop then: its result will not be stored.
   */
  signal: AbortSignal;
}

export type Job<T> = (context: JobContext) => T | Promise<T>;

export interface GetOrRunOptions {
  /** The job type: 1–64 characters of `[a-z0-9_.-]`. */
  kind: string;
  /** Hash of the full request parameters (≤ 128 bytes): a key reused with other parameters is refused. */
  fingerprint?: string;
  /** Lease length in ms (default: the server's, 30000). The lease is renewed every third of it while the job runs. */
  leaseMs?: number;
  /** Leases the record may be granted (default: the server's, 3); taken from the claim that creates the record. */
  maxAttempts?: number;
  /** Backoff after the first retryable failure, doubling after each further one, in ms (default: the server's, 1000). */
  retryBackoffMs?: number;
  /** Owner id for this call's leases (default: the constructor's). */
  owner?: string;
  /** Cancels this call: see the README. */
  signal?: AbortSignal;
  /**
   * Longest this call waits on another worker's job, counted from the call's
   * start, in ms (default 600000); past it the call rejects with an
   * OnceflightError of code `wait_timeout`. Time spent running the job itself
   * is not bounded by it.
   */
  waitTimeoutMs?: number;
  /** Time between heartbeats in ms (default: a third of the lease). */
  heartbeatIntervalMs?: number;
}

/** Where a getOrRun result came from. */
export type ResultSource = "ran" | "cached" | "awaited";

export interface GetOrRunResult<T> {
  /** The stored result (as JSON round-tripped by the server). */
  result: T;
  /** `ran`: this call's job ran and its result was stored; `cached`: the result was already there; `awaited`: this call waited on another caller's job. */
  source: ResultSource;
  /** Token of the lease that completed the record. */
  token: number;
  /** Attempt that completed the record. */
  attempt: number;
}

const DEFAULT_RETRY: Required<RetryOptions> = {
  maxAttempts: 6,
  maxElapsedMs: 30_000,
  initialDelayMs: 100,
  maxDelayMs: 5_000,
};
const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;
const DEFAULT_WAIT_TIMEOUT_MS = 600_000;
/** The server holds a long-poll at most this long. */
const MAX_WAIT_MS = 60_000;
/** The server refuses failure messages over this many bytes. */
const MAX_MESSAGE_BYTES = 4096;
const MAX_KEY_BYTES = 512;
const CONTROL_CHARS = /[\u0000-\u001F\u007F-\u009F]/;
/** A UTF-16 surrogate without its other half: such a string has no UTF-8 form. */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

interface RequestSpec {
  method: "GET" | "POST" | "DELETE";
  path: string;
  body?: unknown;
  /** Aborts the try in progress and the retries: the call rejects with its reason. */
  signal?: AbortSignal;
  /**
   * Aborts only the waits between tries. A claim uses it: abandoning a claim
   * whose answer is on its way could leave a lease nobody knows about.
   */
  between?: AbortSignal;
  /** Longest one try may take (default: requestTimeoutMs). */
  timeoutMs?: number;
  /** Overrides of the retry budget for this call. */
  budget?: RetryOptions;
}

interface Answer {
  status: number;
  body: unknown;
}

interface Outcome {
  result: unknown;
  source: ResultSource;
  token: number;
  attempt: number;
}

/** Checks a key the way the server does, so that a bad key costs no request. */
export function validateKey(key: unknown): string {
  if (typeof key !== "string" || key.length === 0) {
    throw new OnceflightError("invalid_key", "the key must be a non-empty string");
  }
  if (key === "." || key === "..") {
    throw new OnceflightError("invalid_key", `the key must not be exactly ${JSON.stringify(key)}`);
  }
  if (CONTROL_CHARS.test(key)) {
    throw new OnceflightError("invalid_key", "the key must not contain control characters");
  }
  if (new RegExp(LONE_SURROGATE.source).test(key)) {
    throw new OnceflightError("invalid_key", "the key must be valid Unicode (it has a lone surrogate)");
  }
  const bytes = new TextEncoder().encode(key).length;
  if (bytes > MAX_KEY_BYTES) {
    throw new OnceflightError("invalid_key", `the key is ${bytes} bytes of UTF-8; at most ${MAX_KEY_BYTES} are allowed`);
  }
  return key;
}

function checkToken(token: unknown): number {
  if (typeof token !== "number" || !Number.isSafeInteger(token) || token < 0) {
    throw new OnceflightError("invalid_request", `a token is a non-negative integer up to 2^53-1, not ${String(token)}`);
  }
  return token;
}

function reasonOf(signal: AbortSignal): unknown {
  return signal.reason ?? abortError();
}

function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw reasonOf(signal);
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(reasonOf(signal));
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(reasonOf(signal!));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** Retry-After is whole seconds here, but an HTTP date is valid too. */
function parseRetryAfter(value: string | null): number | undefined {
  if (value === null) return undefined;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed) * 1000;
  const date = Date.parse(trimmed);
  return Number.isNaN(date) ? undefined : Math.max(0, date - Date.now());
}

function isErrorBody(body: unknown): body is ErrorBody {
  if (typeof body !== "object" || body === null) return false;
  const error = (body as { error?: unknown }).error;
  return typeof error === "object" && error !== null && typeof (error as { code?: unknown }).code === "string";
}

/** Whether a job's error allows a later attempt: yes unless it says `retryable: false`. */
function isRetryable(error: unknown): boolean {
  return !(typeof error === "object" && error !== null && (error as { retryable?: unknown }).retryable === false);
}

/** A failure message the server accepts: no NUL, at most 4096 bytes of UTF-8. */
function failureMessage(error: unknown): string {
  let message: string;
  if (error instanceof Error) message = error.message || error.name;
  else if (typeof error === "string") message = error;
  else {
    try {
      message = JSON.stringify(error) ?? String(error);
    } catch {
      message = String(error);
    }
  }
  message = message.replace(/\u0000/g, "").replace(LONE_SURROGATE, "\uFFFD");
  const encoder = new TextEncoder();
  if (encoder.encode(message).length <= MAX_MESSAGE_BYTES) return message;
  // Cut on code points so that no character is split in two.
  let out = "";
  let bytes = 0;
  for (const char of message) {
    const size = encoder.encode(char).length;
    if (bytes + size > MAX_MESSAGE_BYTES) break;
    out += char;
    bytes += size;
  }
  return out;
}

export class Onceflight {
  readonly baseUrl: string;
  readonly owner: string | undefined;
  private readonly token: string | undefined;
  private readonly fetchImpl: typeof fetch;
  private readonly retry: Required<RetryOptions>;
  private readonly requestTimeoutMs: number;
  /** The shared flights of this client, by key: see getOrRun. */
  private readonly flights = new Map<string, Flight>();

  constructor(options: OnceflightOptions) {
    if (!options || typeof options.baseUrl !== "string" || options.baseUrl === "") {
      throw new TypeError("Onceflight: options.baseUrl is required");
    }
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.token = options.token;
    this.owner = options.owner;
    const fetchImpl = options.fetch ?? globalThis.fetch;
    if (typeof fetchImpl !== "function") throw new TypeError("Onceflight: no fetch available (Node 18 or later is needed)");
    this.fetchImpl = fetchImpl;
    this.retry = { ...DEFAULT_RETRY, ...definedOnly(options.retry ?? {}) };
    this.requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
  }

  // ---------------------------------------------------------------- getOrRun

  /**
   * Returns the key's result, running `job` only if no worker of the fleet has
   * run it (or is running it). See the README for the whole protocol.
   */
  async getOrRun<T = unknown>(key: string, job: Job<T>, options: GetOrRunOptions): Promise<GetOrRunResult<T>> {
    validateKey(key);
    if (typeof job !== "function") throw new TypeError("getOrRun: job must be a function");
    if (!options || typeof options.kind !== "string") throw new TypeError("getOrRun: options.kind is required");
    throwIfAborted(options.signal);
    const identity = JSON.stringify([options.kind, options.fingerprint ?? null]);
    const existing = this.flights.get(key);
    if (existing && existing.identity === identity && !existing.cancelled) {
      return existing.join(false, options) as Promise<GetOrRunResult<T>>;
    }
    // A call with another kind or fingerprint is not coalesced: it goes to the
    // server on its own, which refuses it if the record was made otherwise.
    const flight = new Flight(this, key, job as Job<unknown>, options, identity);
    if (!existing) this.flights.set(key, flight);
    const joined = flight.join(true, options) as Promise<GetOrRunResult<T>>;
    flight.start();
    return joined;
  }

  /** @internal Called by a flight when it ends or is cancelled. */
  forget(flight: Flight): void {
    if (this.flights.get(flight.key) === flight) this.flights.delete(flight.key);
  }

  // ------------------------------------------------------- low-level calls

  /** POST /v1/requests/{key}/claim (owner defaults to the client's). Answers acquired, in_flight, completed or failed. */
  async claim(key: string, body: ClaimBody, options: CallOptions = {}): Promise<ClaimResponse> {
    // The client's owner id is the default, so that every lease says who holds it.
    const withOwner = body.owner === undefined && this.owner !== undefined ? { ...body, owner: this.owner } : body;
    return this.claimWith(key, withOwner, { signal: options.signal });
  }

  /** @internal */
  async claimWith(key: string, body: ClaimBody, spec: Pick<RequestSpec, "signal" | "between">): Promise<ClaimResponse> {
    const answer = await this.request({ method: "POST", path: `${this.keyPath(key)}/claim`, body, ...spec });
    if (answer.status === 200 || answer.status === 201 || answer.status === 202) {
      const claim = answer.body as ClaimResponse;
      if (claim && ["acquired", "in_flight", "completed", "failed"].includes(claim.state)) return claim;
    }
    throw this.errorFor(answer);
  }

  /** POST /v1/requests/{key}/heartbeat: renews the lease; LeaseLostError (409) when it is no longer this token's. */
  async heartbeat(key: string, token: number, leaseMs?: number, options: CallOptions = {}): Promise<HeartbeatResponse> {
    return this.heartbeatWith(key, token, leaseMs, { signal: options.signal });
  }

  /** @internal */
  async heartbeatWith(
    key: string,
    token: number,
    leaseMs: number | undefined,
    spec: Pick<RequestSpec, "signal" | "budget">,
  ): Promise<HeartbeatResponse> {
    const body = leaseMs === undefined ? { token: checkToken(token) } : { token: checkToken(token), lease_ms: leaseMs };
    const answer = await this.request({ method: "POST", path: `${this.keyPath(key)}/heartbeat`, body, ...spec });
    if (answer.status === 200) return answer.body as HeartbeatResponse;
    throw this.errorFor(answer);
  }

  /**
   * POST /v1/requests/{key}/complete: stores the result (any JSON value;
   * `undefined` is sent as null). Repeating it with the same token succeeds
   * again and the first result stands.
   */
  async complete(key: string, token: number, result: unknown, options: CallOptions = {}): Promise<RecordBody> {
    const body = { token: checkToken(token), result: result === undefined ? null : result };
    const answer = await this.request({ method: "POST", path: `${this.keyPath(key)}/complete`, body, signal: options.signal });
    if (answer.status === 200) return answer.body as RecordBody;
    throw this.errorFor(answer);
  }

  /** POST /v1/requests/{key}/fail: records the failure; `retryable` defaults to true. */
  async fail(key: string, token: number, message: string, retryable?: boolean, options: CallOptions = {}): Promise<RecordBody> {
    const body =
      retryable === undefined
        ? { token: checkToken(token), message }
        : { token: checkToken(token), message, retryable };
    const answer = await this.request({ method: "POST", path: `${this.keyPath(key)}/fail`, body, signal: options.signal });
    if (answer.status === 200) return answer.body as RecordBody;
    throw this.errorFor(answer);
  }

  /**
   * POST /v1/requests/{key}/release: gives the lease up so that anyone may
   * claim the key at once. A repeated release answers LeaseLostError (409).
   */
  async release(key: string, token: number, options: CallOptions = {}): Promise<RecordBody> {
    const body = { token: checkToken(token) };
    const answer = await this.request({ method: "POST", path: `${this.keyPath(key)}/release`, body, signal: options.signal });
    if (answer.status === 200) return answer.body as RecordBody;
    throw this.errorFor(answer);
  }

  /**
   * GET /v1/requests/{key}: the record, or null when there is none. With
   * `waitMs` (0–60000) the server holds the answer while the job is in flight.
   */
  async get(key: string, options: CallOptions & { waitMs?: number } = {}): Promise<RecordBody | null> {
    const waitMs = options.waitMs;
    const path = waitMs === undefined ? this.keyPath(key) : `${this.keyPath(key)}?wait_ms=${encodeURIComponent(String(waitMs))}`;
    const answer = await this.request({
      method: "GET",
      path,
      signal: options.signal,
      timeoutMs: this.requestTimeoutMs + (typeof waitMs === "number" && waitMs > 0 ? waitMs : 0),
    });
    if (answer.status === 200) return answer.body as RecordBody;
    if (answer.status === 404 && isErrorBody(answer.body) && answer.body.error.code === "not_found") return null;
    throw this.errorFor(answer);
  }

  /** DELETE /v1/requests/{key}: true when a record was deleted, false when there was none. */
  async delete(key: string, options: CallOptions = {}): Promise<boolean> {
    const answer = await this.request({ method: "DELETE", path: this.keyPath(key), signal: options.signal });
    if (answer.status === 204 || answer.status === 200) return true;
    if (answer.status === 404 && isErrorBody(answer.body) && answer.body.error.code === "not_found") return false;
    throw this.errorFor(answer);
  }

  /**
   * GET /v1/requests: one page of the records `query` selects, without their
   * results (`result` is null: `get` a key for it). Pages may be short while
   * `next_cursor` is set (a Redis store bounds each page's scan); the listing
   * ends when `next_cursor` is null.
   */
  async list(query: ListQuery = {}, options: CallOptions = {}): Promise<ListResponse> {
    const params = new URLSearchParams();
    for (const [name, value] of Object.entries(query)) {
      if (value !== undefined) params.set(name, String(value));
    }
    const search = params.toString();
    const answer = await this.request({
      method: "GET",
      path: search === "" ? "/v1/requests" : `/v1/requests?${search}`,
      signal: options.signal,
    });
    if (answer.status === 200) return answer.body as ListResponse;
    throw this.errorFor(answer);
  }

  /** Every record `query` selects, page after page (one request a page, as it is iterated). */
  async *listAll(query: Omit<ListQuery, "cursor"> = {}, options: CallOptions = {}): AsyncGenerator<RecordBody> {
    let cursor: string | undefined;
    do {
      const page = await this.list({ ...query, cursor }, options);
      yield* page.records;
      cursor = page.next_cursor ?? undefined;
    } while (cursor !== undefined);
  }

  /**
   * GET /v1/stats: counts of the caller's records by state and kind, live and
   * expired leases, the oldest live lease's age; read at `as_of` and kept by
   * the server for `max_age_ms` (while a long count of a large store runs,
   * the previous counts are answered: `as_of` tells their age).
   */
  async stats(options: CallOptions = {}): Promise<StatsResponse> {
    const answer = await this.request({ method: "GET", path: "/v1/stats", signal: options.signal });
    if (answer.status === 200) return answer.body as StatsResponse;
    throw this.errorFor(answer);
  }

  /** @internal Releases a lease, ignoring every failure: an unreleased lease still ends when it expires. */
  async releaseQuietly(key: string, token: number): Promise<void> {
    try {
      await this.release(key, token);
    } catch {
      // LeaseLostError means the lease is already gone, which is the goal.
    }
  }

  // ------------------------------------------------------------- plumbing

  private keyPath(key: string): string {
    return `/v1/requests/${encodeURIComponent(validateKey(key))}`;
  }

  /** Maps an unexpected answer to the matching error class. */
  private errorFor(answer: Answer): OnceflightError {
    const body = isErrorBody(answer.body) ? answer.body : undefined;
    const code = body?.error.code ?? `http_${answer.status}`;
    const message = body?.error.message ?? `unexpected answer ${answer.status} from the server`;
    const options = { status: answer.status, body };
    if (code === "lease_lost") return new LeaseLostError(message, options);
    if (code === "fingerprint_mismatch") return new FingerprintMismatchError(message, options);
    if (answer.status === 503) return new UnavailableError(code, message, options);
    if (answer.status < 400) return new OnceflightError("invalid_response", message, options);
    return new OnceflightError(code, message, options);
  }

  /**
   * Sends one call, retrying 503 answers and network errors within the retry
   * budget. Every call of the protocol is safe to repeat: a claim is decided
   * atomically by the store, and heartbeat, complete, fail and release are
   * idempotent for one token (see the README).
   */
  private async request(spec: RequestSpec): Promise<Answer> {
    const budget = { ...this.retry, ...definedOnly(spec.budget ?? {}) };
    const url = this.baseUrl + spec.path;
    const headers: Record<string, string> = { accept: "application/json" };
    if (this.token !== undefined) headers.authorization = `Bearer ${this.token}`;
    let payload: string | undefined;
    if (spec.body !== undefined) {
      // Serialising before the first try makes a body that is not JSON (a
      // BigInt, a cycle) fail at once instead of being retried.
      payload = JSON.stringify(spec.body);
      headers["content-type"] = "application/json";
    }
    const timeoutMs = spec.timeoutMs ?? this.requestTimeoutMs;
    const started = Date.now();
    for (let attempt = 1; ; attempt++) {
      throwIfAborted(spec.signal);
      let failure: UnavailableError;
      let delayMs: number | undefined;
      const controller = new AbortController();
      const onAbort = () => controller.abort(reasonOf(spec.signal!));
      spec.signal?.addEventListener("abort", onAbort, { once: true });
      const timer = setTimeout(
        () => controller.abort(new OnceflightError("network_error", `no answer within ${timeoutMs} ms`)),
        timeoutMs,
      );
      try {
        const res = await this.fetchImpl(url, { method: spec.method, headers, body: payload, signal: controller.signal });
        const text = await res.text();
        let body: unknown = undefined;
        if (text !== "") {
          try {
            body = JSON.parse(text);
          } catch {
            if (res.status < 400 || res.status === 503) {
              throw new OnceflightError("invalid_response", `the server answered ${res.status} with a body that is not JSON`, {
                status: res.status,
              });
            }
          }
        }
        if (res.status !== 503) return { status: res.status, body };
        failure = this.errorFor({ status: 503, body }) as UnavailableError;
        delayMs = parseRetryAfter(res.headers.get("retry-after"));
      } catch (err) {
        if (spec.signal?.aborted) throw reasonOf(spec.signal);
        if (err instanceof OnceflightError && err.code === "invalid_response") throw err;
        const detail = err instanceof Error ? err.message : String(err);
        failure = new UnavailableError("network_error", `${spec.method} ${spec.path} failed: ${detail}`, { cause: err });
      } finally {
        clearTimeout(timer);
        spec.signal?.removeEventListener("abort", onAbort);
      }
      const backoff = Math.min(budget.maxDelayMs, budget.initialDelayMs * 2 ** (attempt - 1));
      const wait = delayMs ?? backoff / 2 + Math.random() * (backoff / 2);
      if (attempt >= budget.maxAttempts || Date.now() - started + wait > budget.maxElapsedMs) {
        throw new UnavailableError(failure.code, `${failure.message} (gave up after ${attempt} tries)`, {
          status: failure.status,
          body: failure.body,
          cause: failure.cause,
        });
      }
      await sleep(wait, anySignal(spec.signal, spec.between));
    }
  }
}

function definedOnly<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** AbortSignal.any is missing from Node 18, so combine two signals by hand. */
function anySignal(a: AbortSignal | undefined, b: AbortSignal | undefined): AbortSignal | undefined {
  if (!a) return b;
  if (!b) return a;
  if (a.aborted) return a;
  if (b.aborted) return b;
  const controller = new AbortController();
  const onA = () => controller.abort(a.reason);
  const onB = () => controller.abort(b.reason);
  a.addEventListener("abort", onA, { once: true });
  b.addEventListener("abort", onB, { once: true });
  controller.signal.addEventListener(
    "abort",
    () => {
      a.removeEventListener("abort", onA);
      b.removeEventListener("abort", onB);
    },
    { once: true },
  );
  return controller.signal;
}

// ------------------------------------------------------------------ flights

interface Waiter {
  resolve(value: GetOrRunResult<unknown>): void;
  reject(reason: unknown): void;
  /** The caller whose job runs; the others get `awaited` instead of `ran`. */
  leader: boolean;
  deadline: number;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
  timer: ReturnType<typeof setTimeout> | undefined;
  done: boolean;
}

/**
 * One claim of a key shared by every concurrent getOrRun of this client with
 * the same key, kind and fingerprint. Callers join and leave it; it is
 * cancelled (job aborted, lease released) only when the last one leaves.
 */
class Flight {
  private readonly waiters = new Set<Waiter>();
  private readonly cancelController = new AbortController();
  private phase: "claiming" | "running" | "waiting" | "finished" = "claiming";
  /** The caller whose departure cancelled the flight: answered once the lease is given back. */
  private lastOut: { waiter: Waiter; reason: unknown } | undefined;

  constructor(
    private readonly client: Onceflight,
    readonly key: string,
    private readonly job: Job<unknown>,
    private readonly options: GetOrRunOptions,
    readonly identity: string,
  ) {}

  get cancelled(): boolean {
    return this.cancelController.signal.aborted;
  }

  join(leader: boolean, options: GetOrRunOptions): Promise<GetOrRunResult<unknown>> {
    return new Promise((resolve, reject) => {
      const waitTimeoutMs = options.waitTimeoutMs ?? DEFAULT_WAIT_TIMEOUT_MS;
      const waiter: Waiter = {
        resolve,
        reject,
        leader,
        deadline: Date.now() + waitTimeoutMs,
        signal: options.signal,
        onAbort: undefined,
        timer: undefined,
        done: false,
      };
      this.waiters.add(waiter);
      if (options.signal) {
        const signal = options.signal;
        waiter.onAbort = () => this.leave(waiter, reasonOf(signal));
        signal.addEventListener("abort", waiter.onAbort, { once: true });
      }
      if (this.phase === "waiting") this.arm(waiter);
    });
  }

  start(): void {
    this.run().then(
      (outcome) => this.finish(outcome, undefined),
      (error: unknown) => this.finish(undefined, error),
    );
  }

  /** A caller goes away (its signal aborted or its wait timed out). */
  private leave(waiter: Waiter, reason: unknown): void {
    if (waiter.done) return;
    this.detach(waiter);
    if (this.waiters.size === 0 && this.phase !== "finished") {
      // The last caller is answered only after the lease is released, so that
      // when its promise settles another caller can acquire the key at once.
      this.lastOut = { waiter, reason };
      this.client.forget(this);
      this.cancelController.abort(reason);
    } else {
      waiter.reject(reason);
    }
  }

  private detach(waiter: Waiter): void {
    waiter.done = true;
    this.waiters.delete(waiter);
    if (waiter.timer !== undefined) clearTimeout(waiter.timer);
    if (waiter.signal && waiter.onAbort) waiter.signal.removeEventListener("abort", waiter.onAbort);
  }

  private finish(outcome: Outcome | undefined, error: unknown): void {
    this.phase = "finished";
    this.client.forget(this);
    for (const waiter of [...this.waiters]) {
      this.detach(waiter);
      if (outcome) {
        const source = outcome.source === "ran" && !waiter.leader ? "awaited" : outcome.source;
        waiter.resolve({ result: outcome.result, source, token: outcome.token, attempt: outcome.attempt });
      } else {
        waiter.reject(error);
      }
    }
    if (this.lastOut) this.lastOut.waiter.reject(this.lastOut.reason);
  }

  /** Starts a waiter's wait-timeout clock; it runs only while the flight waits on another worker. */
  private arm(waiter: Waiter): void {
    if (waiter.done || waiter.timer !== undefined || !Number.isFinite(waiter.deadline)) return;
    const left = waiter.deadline - Date.now();
    const timeout = () =>
      this.leave(
        waiter,
        new OnceflightError("wait_timeout", `gave up waiting for key ${JSON.stringify(this.key)} after the wait timeout`),
      );
    if (left <= 0) timeout();
    else waiter.timer = setTimeout(timeout, left);
  }

  private disarm(): void {
    for (const waiter of this.waiters) {
      if (waiter.timer !== undefined) clearTimeout(waiter.timer);
      waiter.timer = undefined;
    }
  }

  private claimBody(): ClaimBody {
    const o = this.options;
    const body: ClaimBody = { kind: o.kind };
    if (o.fingerprint !== undefined) body.fingerprint = o.fingerprint;
    const owner = o.owner ?? this.client.owner;
    if (owner !== undefined) body.owner = owner;
    if (o.leaseMs !== undefined) body.lease_ms = o.leaseMs;
    if (o.maxAttempts !== undefined) body.max_attempts = o.maxAttempts;
    if (o.retryBackoffMs !== undefined) body.retry_backoff_ms = o.retryBackoffMs;
    return body;
  }

  private async run(): Promise<Outcome> {
    const cancel = this.cancelController.signal;
    const body = this.claimBody();
    // Once this flight has waited on, or lost a lease to, another worker, a
    // completed record is that worker's work.
    let waited = false;
    for (;;) {
      throwIfAborted(cancel);
      this.phase = "claiming";
      const claimSentAt = Date.now();
      const claim = await this.client.claimWith(this.key, body, { between: cancel });
      if (cancel.aborted) {
        if (claim.state === "acquired") await this.client.releaseQuietly(this.key, claim.token);
        throw reasonOf(cancel);
      }
      switch (claim.state) {
        case "completed":
          return { result: claim.result, source: waited ? "awaited" : "cached", token: claim.token, attempt: claim.attempt };
        case "failed":
          throw new JobFailedError(claim);
        case "in_flight": {
          waited = true;
          const record = await this.waitFor(claim);
          if (record?.state === "completed") {
            return { result: record.result, source: "awaited", token: record.token, attempt: record.attempt };
          }
          // Anything else (lease expired or released, record failed or
          // deleted, wait over) is settled by claiming again.
          continue;
        }
        case "acquired": {
          const outcome = await this.runJob(claim, claimSentAt);
          if (outcome) return outcome;
          waited = true;
          continue;
        }
      }
    }
  }

  /** Long-polls the record while another worker holds the lease. */
  private async waitFor(claim: ClaimInFlight): Promise<RecordBody | null> {
    void claim;
    const cancel = this.cancelController.signal;
    this.phase = "waiting";
    try {
      for (const waiter of [...this.waiters]) this.arm(waiter);
      throwIfAborted(cancel);
      // Wait no longer than the most patient caller may: the others are
      // answered by their own timers.
      let longest = 0;
      for (const waiter of this.waiters) longest = Math.max(longest, waiter.deadline - Date.now());
      const waitMs = Math.max(1, Math.min(MAX_WAIT_MS, Math.ceil(longest)));
      return await this.client.get(this.key, { waitMs, signal: cancel });
    } finally {
      this.disarm();
      if (this.phase === "waiting") this.phase = "claiming";
    }
  }

  /**
   * Runs the job under the lease, heartbeating every third of it. Answers the
   * outcome once the result is stored, or null when the lease was lost (the
   * caller then claims again like any other caller).
   */
  private async runJob(claim: ClaimAcquired, claimSentAt: number): Promise<Outcome | null> {
    this.phase = "running";
    const { key } = this;
    const { token, attempt } = claim;
    const cancel = this.cancelController.signal;
    const jobController = new AbortController();
    const onCancel = () => jobController.abort(reasonOf(cancel));
    cancel.addEventListener("abort", onCancel, { once: true });
    if (cancel.aborted) onCancel();

    let lost = false;
    // When the lease surely ends by the local clock: counted from before the
    // request that granted or renewed it was sent, so it errs on the early side.
    let leaseEnd = claimSentAt + claim.lease_ms;
    const heartbeats = new AbortController();
    const interval = Math.max(1, Math.floor(this.options.heartbeatIntervalMs ?? claim.lease_ms / 3));
    let timer: ReturnType<typeof setTimeout> | undefined;
    const beat = async () => {
      timer = undefined;
      const sentAt = Date.now();
      try {
        // A heartbeat may retry only until the next one is due: past that the
        // next one takes over.
        const renewed = await this.client.heartbeatWith(key, token, this.options.leaseMs, {
          signal: heartbeats.signal,
          budget: { maxElapsedMs: interval },
        });
        leaseEnd = sentAt + renewed.lease_ms;
      } catch (err) {
        if (heartbeats.signal.aborted) return;
        if (err instanceof LeaseLostError) {
          lost = true;
          jobController.abort(err);
          return;
        }
        // The server could not be reached. While the lease may still be
        // live, keep beating; once it has surely lapsed another worker may
        // hold the key, so the job is stopped as if the lease were lost.
        if (Date.now() >= leaseEnd) {
          lost = true;
          jobController.abort(
            new LeaseLostError(`the lease of key ${JSON.stringify(key)} lapsed: no heartbeat reached the server in time`),
          );
          return;
        }
      }
      if (!heartbeats.signal.aborted) timer = setTimeout(beat, interval);
    };
    timer = setTimeout(beat, interval);

    type Settled = { kind: "value"; value: unknown } | { kind: "error"; error: unknown } | { kind: "aborted" };
    let settled: Settled;
    try {
      const running = (async () => this.job({ key, token, attempt, takeover: claim.takeover, signal: jobController.signal }))();
      // A job that ignores its signal is not waited for: once the lease is
      // lost or every caller left, its eventual result is dropped.
      settled = await new Promise<Settled>((resolve) => {
        running.then(
          (value) => resolve({ kind: "value", value }),
          (error: unknown) => resolve({ kind: "error", error }),
        );
        if (jobController.signal.aborted) resolve({ kind: "aborted" });
        else jobController.signal.addEventListener("abort", () => resolve({ kind: "aborted" }), { once: true });
      });
    } finally {
      heartbeats.abort();
      if (timer !== undefined) clearTimeout(timer);
      cancel.removeEventListener("abort", onCancel);
    }

    if (cancel.aborted) {
      await this.client.releaseQuietly(key, token);
      throw reasonOf(cancel);
    }
    if (lost || settled.kind === "aborted") return null;

    if (settled.kind === "value") {
      try {
        const record = await this.client.complete(key, token, settled.value);
        return { result: record.result, source: "ran", token: record.token, attempt: record.attempt };
      } catch (err) {
        if (err instanceof LeaseLostError) {
          // The job is over, but work it started in the background may still
          // be tied to its signal: tell it that its result was not taken.
          jobController.abort(err);
          return null;
        }
        if (err instanceof OnceflightError && err.code === "too_large") {
          // The same job would most likely produce an equally large result,
          // so the record is failed for good rather than retried.
          const record = await this.client.fail(key, token, failureMessage(err), false);
          throw new JobFailedError(asFailed(record), { cause: err });
        }
        await this.client.releaseQuietly(key, token);
        throw err;
      }
    }

    let record: RecordBody;
    try {
      record = await this.client.fail(key, token, failureMessage(settled.error), isRetryable(settled.error));
    } catch (err) {
      if (err instanceof LeaseLostError) return null;
      throw err;
    }
    throw new JobFailedError(asFailed(record), { cause: settled.error });
  }
}

function asFailed(record: RecordBody): FailedRecord {
  return { ...record, error: record.error ?? { message: "unknown error", retryable: false } };
}
