// The client's request and answer types, all derived from the generated
// src/schema.ts so that a change of the server's API shows up as a type error
// here rather than as a surprise at run time.
import type { components, operations } from "./schema.js";

type Schemas = components["schemas"];

/** Body of a claim: `kind` is required; the other fields are optional. */
export type ClaimBody = Schemas["ClaimBody"];
/** Any answer of a claim, discriminated by `state`. */
export type ClaimResponse = Schemas["ClaimResponse"];
/** The caller holds a new lease and must do the job (201). */
export type ClaimAcquired = Extract<ClaimResponse, { state: "acquired" }>;
/** Another worker holds a live lease (202). */
export type ClaimInFlight = Extract<ClaimResponse, { state: "in_flight" }>;
/** The job is done (200). */
export type ClaimCompleted = Extract<ClaimResponse, { state: "completed" }>;
/** The job failed and no lease can be granted now (200). */
export type ClaimFailed = Extract<ClaimResponse, { state: "failed" }>;
export type CompleteBody = Schemas["CompleteBody"];
export type FailBody = Schemas["FailBody"];
export type HeartbeatBody = Schemas["HeartbeatBody"];
export type ReleaseBody = Schemas["ReleaseBody"];
/** Answer of a heartbeat: the lease's new end. */
export type HeartbeatResponse = Schemas["HeartbeatResponse"];
/** A record as stored, seen at one instant of the store's clock. */
export type RecordBody = Schemas["RecordBody"];
/** Every error body of the server: `{"error": {"code", "message"}}`. */
export type ErrorBody = Schemas["ErrorBody"];
/** A stored failure: its message and whether a later attempt may succeed. */
export type ErrorInfo = Schemas["ErrorInfo"];

/**
 * What a failed record looks like to `JobFailedError`: either the answer of a
 * claim (`state: "failed"`) or the full record returned by `fail`. Both carry
 * these fields.
 */
export type FailedRecord = Pick<ClaimFailed, "key" | "token" | "attempt" | "error" | "retry_after_ms"> &
  Partial<Omit<RecordBody, "key" | "token" | "attempt" | "error" | "retry_after_ms">>;

type ListParams = NonNullable<operations["list_records"]["parameters"]["query"]>;

/**
 * What a listing (`GET /v1/requests`) selects: every field optional. `stuck`
 * keeps processing records whose lease ran out and that nobody took over
 * yet; `retry` keeps failed records that allow a retry (`allowed`) or not
 * (`none`). Pass `cursor` (a page's `next_cursor`) to go on.
 */
export type ListQuery = Omit<ListParams, "state" | "retry" | "order"> & {
  state?: "processing" | "completed" | "failed";
  retry?: "allowed" | "none";
  order?: "newest" | "oldest";
};
/** One page of a listing: records without their results, and the next page's cursor. */
export type ListResponse = Schemas["ListResponse"];
/** Counts of the caller's records by state and kind, with live and expired leases. */
export type StatsResponse = Schemas["StatsResponse"];
