// The client's request and answer types, all derived from the generated
// src/schema.ts so that a change of the server's API shows up as a type error
// here rather than as a surprise at run time.
import type { components } from "./schema.js";

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
