// getOrRun's lease handling against the real server: heartbeats, a lost
// lease, failures and their retries, cancellation and the wait timeout.
import assert from "node:assert/strict";
import { test } from "node:test";
import { JobFailedError, NonRetryableError, OnceflightError } from "../dist/index.js";
import { deferred, eventually, forEachBackend, recordingFetch, sleep } from "./helpers.mjs";

const T = { timeout: 60_000 };

function abortable(signal) {
  return new Promise((resolve) => {
    if (signal.aborted) resolve();
    else signal.addEventListener("abort", () => resolve(), { once: true });
  });
}

forEachBackend("leases", (ctx) => {
  test("a job longer than three leases stays alive through heartbeats", T, async () => {
    const recorder = recordingFetch();
    const client = ctx.client({ fetch: recorder });
    const other = ctx.client();
    const key = ctx.key("long");
    const leaseMs = 600;
    let seenBySomeoneElse;
    let signal;
    const outcome = await client.getOrRun(
      key,
      async (job) => {
        signal = job.signal;
        await sleep(4 * leaseMs);
        // Well past the first lease's end, another caller still finds the job in flight.
        seenBySomeoneElse = await other.claim(key, { kind: "render" });
        await sleep(leaseMs);
        return { frames: 24 };
      },
      { kind: "render", leaseMs },
    );
    assert.equal(seenBySomeoneElse.state, "in_flight");
    assert.equal(signal.aborted, false);
    assert.equal(outcome.source, "ran");
    assert.deepEqual(outcome.result, { frames: 24 });
    assert.equal(outcome.attempt, 1);
    assert.ok(recorder.count("heartbeat") >= 3, `heartbeats: ${recorder.count("heartbeat")}`);
    const record = await other.get(key);
    assert.equal(record.state, "completed");
    assert.deepEqual(record.result, { frames: 24 });
    assert.equal(record.attempt, 1);
  });

  test("a heartbeat answered lease_lost aborts the job, drops its result and goes on as a waiter", T, async () => {
    // Heartbeats are held back until the lease has been taken from under the
    // job, so that the first one to reach the server meets the new holder.
    const gate = deferred();
    const recorder = recordingFetch(async (call) => {
      if (call.op === "heartbeat") await gate.promise;
    });
    const client = ctx.client({ fetch: recorder });
    const other = ctx.client();
    const key = ctx.key("lost");
    const started = deferred();
    const sawAbort = deferred();
    let runs = 0;
    const running = client.getOrRun(
      key,
      async ({ signal }) => {
        runs++;
        started.resolve();
        await abortable(signal);
        sawAbort.resolve(signal.reason);
        // A job that ignores its signal and returns anyway: the result must not be stored.
        return { by: "stale" };
      },
      { kind: "job", leaseMs: 900 },
    );
    await started.promise;
    assert.equal(await other.delete(key), true);
    const holder = await other.claim(key, { kind: "job", lease_ms: 30_000 });
    assert.equal(holder.state, "acquired");
    gate.resolve();
    const reason = await sawAbort.promise;
    assert.equal(reason?.code, "lease_lost");
    // The job's caller now waits on the new holder like any other caller.
    await eventually(() => recorder.count("get") >= 1, 20_000, "the long-poll");
    await other.complete(key, holder.token, { by: "other" });
    const outcome = await running;
    assert.equal(outcome.source, "awaited");
    assert.deepEqual(outcome.result, { by: "other" });
    assert.equal(runs, 1);
    assert.equal(recorder.count("complete"), 0, "the stale result was never sent");
    assert.deepEqual((await other.get(key)).result, { by: "other" });
  });

  test("a complete answered lease_lost is not reported as stored", T, async () => {
    const recorder = recordingFetch();
    const client = ctx.client({ fetch: recorder });
    const other = ctx.client();
    const key = ctx.key("lost-complete");
    const started = deferred();
    const proceed = deferred();
    let jobSignal;
    const running = client.getOrRun(
      key,
      async ({ signal }) => {
        jobSignal = signal;
        started.resolve();
        await proceed.promise;
        return { by: "stale" };
      },
      { kind: "job", leaseMs: 30_000 },
    );
    await started.promise;
    await other.delete(key);
    const holder = await other.claim(key, { kind: "job", lease_ms: 30_000 });
    assert.equal(holder.state, "acquired");
    proceed.resolve();
    await eventually(() => recorder.count("get") >= 1, 20_000, "the long-poll after the refused complete");
    assert.equal(recorder.count("complete"), 1);
    await other.complete(key, holder.token, { by: "other" });
    const outcome = await running;
    assert.equal(outcome.source, "awaited");
    assert.deepEqual(outcome.result, { by: "other" });
    assert.equal(jobSignal.aborted, true);
    assert.equal(jobSignal.reason?.code, "lease_lost");
    assert.deepEqual((await other.get(key)).result, { by: "other" });
  });

  test("a thrown error fails the record; retries follow the backoff; maxAttempts is honoured", T, async () => {
    const client = ctx.client();
    const key = ctx.key("flaky");
    const options = { kind: "job", maxAttempts: 3, retryBackoffMs: 300, leaseMs: 5000 };
    const attempts = [];
    const job = async ({ attempt }) => {
      attempts.push(attempt);
      throw new Error(`attempt ${attempt} broke`);
    };
    const expectFailure = async (check) => {
      await assert.rejects(client.getOrRun(key, job, options), (err) => {
        assert.ok(err instanceof JobFailedError);
        assert.ok(err instanceof OnceflightError);
        check(err);
        return true;
      });
    };

    let retryAfterMs;
    await expectFailure((err) => {
      assert.equal(err.record.state, "failed");
      assert.equal(err.record.attempt, 1);
      assert.deepEqual(err.record.error, { message: "attempt 1 broke", retryable: true });
      assert.equal(err.cause?.message, "attempt 1 broke");
      assert.ok(err.retryAfterMs > 0);
      retryAfterMs = err.retryAfterMs;
    });
    // Before the backoff has passed, the failure is answered without a run.
    await expectFailure((err) => {
      assert.equal(err.record.attempt, 1);
      assert.ok(err.retryAfterMs > 0);
    });
    assert.deepEqual(attempts, [1]);

    await sleep(retryAfterMs + 150);
    await expectFailure((err) => {
      assert.equal(err.record.attempt, 2);
      assert.ok(err.retryAfterMs > 0, "one attempt is left");
      retryAfterMs = err.retryAfterMs;
    });
    await sleep(retryAfterMs + 150);
    await expectFailure((err) => {
      assert.equal(err.record.attempt, 3);
      assert.equal(err.retryAfterMs, undefined, "no attempt is left");
      assert.equal(err.record.retry_after_ms, null);
    });
    await expectFailure((err) => assert.equal(err.retryAfterMs, undefined));
    assert.deepEqual(attempts, [1, 2, 3]);
  });

  test("a NonRetryableError (or retryable: false) is not retried", T, async () => {
    const client = ctx.client();
    for (const thrown of [new NonRetryableError("bad prompt"), Object.assign(new Error("bad prompt"), { retryable: false })]) {
      const key = ctx.key("fatal");
      let runs = 0;
      const job = async () => {
        runs++;
        throw thrown;
      };
      const options = { kind: "job", retryBackoffMs: 1 };
      await assert.rejects(client.getOrRun(key, job, options), (err) => {
        assert.ok(err instanceof JobFailedError);
        assert.equal(err.retryAfterMs, undefined);
        assert.deepEqual(err.record.error, { message: "bad prompt", retryable: false });
        assert.equal(err.cause, thrown);
        return true;
      });
      await sleep(50);
      await assert.rejects(client.getOrRun(key, job, options), JobFailedError);
      assert.equal(runs, 1);
    }
  });

  test("cancelling through the caller's signal aborts the job and releases the lease", T, async () => {
    const client = ctx.client();
    const other = ctx.client();
    const key = ctx.key("cancel");
    const controller = new AbortController();
    const started = deferred();
    let jobSignal;
    let attempt;
    const running = client.getOrRun(
      key,
      async (job) => {
        jobSignal = job.signal;
        attempt = job.attempt;
        started.resolve();
        await abortable(job.signal);
        return "never stored";
      },
      { kind: "job", leaseMs: 30_000, signal: controller.signal },
    );
    await started.promise;
    const reason = new Error("user went away");
    controller.abort(reason);
    await assert.rejects(running, (err) => err === reason);
    assert.equal(jobSignal.aborted, true);
    // The lease was given back: another caller acquires at once, with the same attempt number.
    const next = await other.claim(key, { kind: "job" });
    assert.equal(next.state, "acquired");
    assert.equal(next.attempt, attempt);

    // Without a reason of its own, the signal's default AbortError is used.
    const c2 = new AbortController();
    const key2 = ctx.key("cancel");
    const started2 = deferred();
    const running2 = client.getOrRun(
      key2,
      async ({ signal }) => {
        started2.resolve();
        await abortable(signal);
      },
      { kind: "job", signal: c2.signal },
    );
    await started2.promise;
    c2.abort();
    await assert.rejects(running2, (err) => err.name === "AbortError");
    assert.equal((await other.claim(key2, { kind: "job" })).state, "acquired");
  });

  test("cancelling while waiting on another worker, and an already aborted signal", T, async () => {
    const client = ctx.client();
    const other = ctx.client();
    const key = ctx.key("cancel-wait");
    const holder = await other.claim(key, { kind: "job", lease_ms: 30_000 });
    const controller = new AbortController();
    const running = client.getOrRun(key, () => assert.fail("must not run"), { kind: "job", signal: controller.signal });
    await sleep(200);
    controller.abort();
    await assert.rejects(running, (err) => err.name === "AbortError");
    await assert.rejects(
      client.getOrRun(key, () => assert.fail("must not run"), { kind: "job", signal: AbortSignal.abort() }),
      (err) => err.name === "AbortError",
    );
    const record = await other.get(key);
    assert.equal(record.token, holder.token, "a waiter's cancellation leaves the holder's lease alone");
    assert.equal(record.lease_expired, false);
  });

  test("waiting past waitTimeoutMs throws wait_timeout", T, async () => {
    const client = ctx.client();
    const other = ctx.client();
    const key = ctx.key("timeout");
    await other.claim(key, { kind: "job", lease_ms: 30_000 });
    await assert.rejects(
      client.getOrRun(key, () => assert.fail("must not run"), { kind: "job", waitTimeoutMs: 400 }),
      (err) => {
        assert.ok(err instanceof OnceflightError);
        assert.equal(err.code, "wait_timeout");
        return true;
      },
    );
  });
});
