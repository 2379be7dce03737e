// Retries of 503 answers and network errors, within the retry budget.
import assert from "node:assert/strict";
import { test } from "node:test";
import { LeaseLostError, UnavailableError } from "../dist/index.js";
import { forEachBackend, recordingFetch } from "./helpers.mjs";

const T = { timeout: 60_000 };
const FAST = { initialDelayMs: 5, maxDelayMs: 20 };

function unavailable(retryAfter = "0") {
  return new Response(JSON.stringify({ error: { code: "store_unavailable", message: "the store did not answer" } }), {
    status: 503,
    headers: { "content-type": "application/json", "retry-after": retryAfter },
  });
}

forEachBackend("retries", (ctx) => {
  test("network errors on the first tries are retried", T, async () => {
    const recorder = recordingFetch(async (call) => {
      if (call.index < 2) throw new TypeError("fetch failed");
    });
    const client = ctx.client({ fetch: recorder, retry: FAST });
    const claim = await client.claim(ctx.key(), { kind: "job" });
    assert.equal(claim.state, "acquired");
    assert.equal(recorder.calls.length, 3);
  });

  test("503 with Retry-After: 0 is retried", T, async () => {
    const recorder = recordingFetch(async (call) => (call.index < 3 ? unavailable("0") : undefined));
    const client = ctx.client({ fetch: recorder, retry: FAST });
    const key = ctx.key();
    assert.equal(await client.get(key), null);
    assert.equal(recorder.calls.length, 4);
  });

  test("past the budget: UnavailableError", T, async () => {
    const down = recordingFetch(async () => {
      throw new TypeError("fetch failed");
    });
    const client = ctx.client({ fetch: down, retry: { ...FAST, maxAttempts: 3 } });
    await assert.rejects(client.claim(ctx.key(), { kind: "job" }), (err) => {
      assert.ok(err instanceof UnavailableError);
      assert.equal(err.code, "network_error");
      assert.equal(err.status, 0);
      return true;
    });
    assert.equal(down.calls.length, 3);

    const busy = recordingFetch(async () => unavailable("0"));
    const client2 = ctx.client({ fetch: busy, retry: { ...FAST, maxAttempts: 4 } });
    await assert.rejects(client2.delete(ctx.key()), (err) => {
      assert.ok(err instanceof UnavailableError);
      assert.equal(err.code, "store_unavailable");
      assert.equal(err.status, 503);
      assert.equal(err.body.error.code, "store_unavailable");
      return true;
    });
    assert.equal(busy.calls.length, 4);

    // A Retry-After beyond the time budget ends the retries at once.
    const slow = recordingFetch(async () => unavailable("30"));
    const client3 = ctx.client({ fetch: slow, retry: { maxAttempts: 10, maxElapsedMs: 1000 } });
    await assert.rejects(client3.get(ctx.key()), UnavailableError);
    assert.equal(slow.calls.length, 1);
  });

  test("fenced calls whose answer was lost are retried safely", T, async () => {
    // The request reaches the server, but its answer is lost on the way back.
    let lose = new Set();
    const recorder = recordingFetch(async (call, send) => {
      if (lose.has(call.op)) {
        lose.delete(call.op);
        await (await send()).arrayBuffer();
        throw new TypeError("fetch failed: socket hang up");
      }
    });
    const client = ctx.client({ fetch: recorder, retry: FAST });

    const key = ctx.key();
    const { token } = await client.claim(key, { kind: "job" });
    lose = new Set(["heartbeat", "complete"]);
    assert.ok((await client.heartbeat(key, token)).lease_ms > 0);
    const done = await client.complete(key, token, { ok: 1 });
    assert.equal(done.state, "completed");
    assert.deepEqual(done.result, { ok: 1 });

    const key2 = ctx.key();
    const claim2 = await client.claim(key2, { kind: "job" });
    lose = new Set(["fail"]);
    const failed = await client.fail(key2, claim2.token, "boom");
    assert.equal(failed.state, "failed");

    // A repeated release answers 409: the low-level call says so...
    const key3 = ctx.key();
    const claim3 = await client.claim(key3, { kind: "job" });
    lose = new Set(["release"]);
    await assert.rejects(client.release(key3, claim3.token), LeaseLostError);
    // ...and getOrRun takes it as done when it cancels.
    const key4 = ctx.key();
    const controller = new AbortController();
    let started;
    const startedP = new Promise((r) => (started = r));
    const running = client.getOrRun(
      key4,
      async ({ signal }) => {
        started();
        await new Promise((r) => signal.addEventListener("abort", r));
      },
      { kind: "job", leaseMs: 30_000, signal: controller.signal },
    );
    await startedP;
    lose = new Set(["release"]);
    controller.abort();
    await assert.rejects(running, (err) => err.name === "AbortError");
    assert.equal((await ctx.client().claim(key4, { kind: "job" })).state, "acquired");
  });

  test("getOrRun retries every call of the protocol", T, async () => {
    // Every request fails once with a network error or a 503 before it gets through.
    let n = 0;
    const recorder = recordingFetch(async () => {
      n++;
      if (n % 2 === 1) {
        if (n % 4 === 1) throw new TypeError("fetch failed");
        return unavailable("0");
      }
    });
    const client = ctx.client({ fetch: recorder, retry: FAST });
    const key = ctx.key();
    let runs = 0;
    const outcome = await client.getOrRun(
      key,
      async () => {
        runs++;
        await new Promise((r) => setTimeout(r, 1000));
        return "made it";
      },
      { kind: "job", leaseMs: 600 },
    );
    assert.equal(runs, 1);
    assert.equal(outcome.source, "ran");
    assert.equal(outcome.result, "made it");
    assert.ok(recorder.count("heartbeat") >= 2);

    // A waiter's long-poll and claims are retried too.
    const other = ctx.client();
    const key2 = ctx.key();
    const holder = await other.claim(key2, { kind: "job", lease_ms: 30_000 });
    const waiting = client.getOrRun(key2, () => assert.fail("must not run"), { kind: "job" });
    setTimeout(() => other.complete(key2, holder.token, "from the holder"), 300);
    const waited = await waiting;
    assert.equal(waited.source, "awaited");
    assert.equal(waited.result, "from the holder");

    // A claim whose answer was lost: the retry finds the lease in flight (it
    // is this caller's own, unknown to it), waits for it to lapse and takes over.
    let loseClaim = true;
    const lossy = recordingFetch(async (call, send) => {
      if (call.op === "claim" && loseClaim) {
        loseClaim = false;
        await (await send()).arrayBuffer();
        throw new TypeError("fetch failed: socket hang up");
      }
    });
    const client3 = ctx.client({ fetch: lossy, retry: FAST });
    const jobs = [];
    const outcome3 = await client3.getOrRun(
      ctx.key(),
      async (job) => {
        jobs.push(job.attempt);
        return "after takeover";
      },
      { kind: "job", leaseMs: 600 },
    );
    assert.deepEqual(jobs, [2]);
    assert.equal(outcome3.result, "after takeover");
  });

  test("a job whose heartbeats cannot get through is stopped once its lease has surely lapsed", T, async () => {
    // Every heartbeat of the first lease fails; the second lease's get through.
    let firstToken;
    const recorder = recordingFetch(async (call) => {
      if (call.op === "heartbeat" && JSON.parse(call.init.body).token === firstToken) throw new TypeError("fetch failed");
    });
    const client = ctx.client({ fetch: recorder, retry: FAST });
    const key = ctx.key();
    const reasons = [];
    const outcome = await client.getOrRun(
      key,
      async ({ token, attempt, signal }) => {
        if (attempt === 1) {
          firstToken = token;
          await new Promise((r) => signal.addEventListener("abort", r));
          reasons.push(signal.reason);
          return "stale";
        }
        await new Promise((r) => setTimeout(r, 900));
        return "second";
      },
      { kind: "job", leaseMs: 600 },
    );
    assert.equal(reasons.length, 1);
    assert.ok(reasons[0] instanceof LeaseLostError);
    assert.equal(outcome.result, "second");
    assert.equal(outcome.attempt, 2);
    assert.equal((await ctx.client().get(key)).result, "second");
  });
});
