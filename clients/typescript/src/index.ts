export { Onceflight, validateKey } from "./client.js";
export type {
  CallOptions,
  GetOrRunOptions,
  GetOrRunResult,
  Job,
  JobContext,
  OnceflightOptions,
  ResultSource,
  RetryOptions,
} from "./client.js";
export {
  FingerprintMismatchError,
  JobFailedError,
  LeaseLostError,
  NonRetryableError,
  OnceflightError,
  UnavailableError,
} from "./errors.js";
export type * from "./types.js";
export type { components, paths, operations } from "./schema.js";
