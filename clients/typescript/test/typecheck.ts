// Compiled (never run) by `npm test` to check that the published declarations
// support the documented usage: a type error here fails the build.
import {
  type ClaimResponse,
  type GetOrRunResult,
  type RecordBody,
  JobFailedError,
  NonRetryableError,
  Onceflight,
  OnceflightError,
} from "onceflight";

declare function generateImage(prompt: string, options: { signal: AbortSignal }): Promise<{ url: string }>;

export async function example(hash: string, prompt: string, signal: AbortSignal): Promise<string> {
  const onceflight = new Onceflight({ baseUrl: "http://127.0.0.1:7700", token: "t".repeat(16), owner: "worker-1" });
  const run: GetOrRunResult<{ url: string }> = await onceflight.getOrRun(
    `image|${hash}`,
    async ({ token, attempt, signal }) => {
      const n: number = token + attempt;
      if (n < 0) throw new NonRetryableError("impossible");
      return generateImage(prompt, { signal });
    },
    { kind: "image", fingerprint: hash, leaseMs: 60_000, maxAttempts: 3, signal, waitTimeoutMs: 120_000 },
  );
  const source: "ran" | "cached" | "awaited" = run.source;

  const claim: ClaimResponse = await onceflight.claim("k", { kind: "image", lease_ms: 1000 });
  if (claim.state === "acquired") {
    const beat = await onceflight.heartbeat("k", claim.token, 1000);
    const done: RecordBody = await onceflight.complete("k", claim.token, { url: run.result.url });
    void beat.lease_ms;
    void done.state;
  } else if (claim.state === "in_flight") {
    const record: RecordBody | null = await onceflight.get("k", { waitMs: claim.retry_after_ms });
    void record;
  } else if (claim.state === "failed") {
    const retryAfter: number | null = claim.retry_after_ms;
    void retryAfter;
  }
  try {
    await onceflight.fail("k", 1, "message", false);
    await onceflight.release("k", 1);
    const deleted: boolean = await onceflight.delete("k");
    void deleted;
  } catch (err) {
    if (err instanceof JobFailedError) return `${err.retryAfterMs ?? "never"} ${err.record.error.message}`;
    if (err instanceof OnceflightError) return `${err.code} ${err.status} ${err.body?.error.message}`;
  }
  return `${source} ${run.result.url}`;
}
