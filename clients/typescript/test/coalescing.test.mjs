// In-process coalescing: concurrent getOrRun calls of one client for one key
// share a single claim when their kind and fingerprint agree.
import assert from "node:assert/strict";
import { test } from "node:test";
import { FingerprintMismatchError } from "../dist/index.js";
import { deferred, eventually, forEachBackend, recordingFetch } from "./helpers.mjs";

const T = { timeout: 60_000 };

forEachBackend("coalescing", (ctx) => {
  test("20 concurrent calls in one process make one claim and one run", T, async () => {
    const recorder = recordingFetch();
    const client = ctx.client({ fetch: recorder });
    const key = ctx.key("thumb");
    const gate = deferred();
    let runs = 0;
    const calls = Array.from({ length: 20 }, () =>
      client.getOrRun(
        key,
        async () => {
          runs++;
          await gate.promise;
          return { url: "thumb.png" };
        },
        { kind: "thumb", fingerprint: "f1", leaseMs: 5000 },
      ),
    );
    // Let every call join before the job finishes.
    setTimeout(() => gate.resolve(), 200);
    const outcomes = await Promise.all(calls);
    assert.equal(runs, 1);
    assert.equal(recorder.count("claim"), 1);
    assert.equal(recorder.count("complete"), 1);
    for (const o of outcomes) assert.deepEqual(o.result, { url: "thumb.png" });
    assert.equal(outcomes.filter((o) => o.source === "ran").length, 1);
    assert.equal(outcomes.filter((o) => o.source === "awaited").length, 19);
    assert.equal(outcomes[0].source, "ran", "the first caller's job is the one that ran");
  });

  test("a different fingerprint or kind is not coalesced and gets FingerprintMismatchError", T, async () => {
    const recorder = recordingFetch();
    const client = ctx.client({ fetch: recorder });
    const key = ctx.key("thumb");
    const started = deferred();
    const gate = deferred();
    const running = client.getOrRun(
      key,
      async () => {
        started.resolve();
        await gate.promise;
        return 1;
      },
      { kind: "thumb", fingerprint: "f1" },
    );
    await started.promise;
    for (const options of [
      { kind: "thumb", fingerprint: "f2" },
      { kind: "other", fingerprint: "f1" },
    ]) {
      await assert.rejects(
        client.getOrRun(key, () => assert.fail("must not run"), options),
        (err) => err instanceof FingerprintMismatchError && err.status === 422,
      );
    }
    assert.equal(recorder.count("claim"), 3, "each mismatching call went to the server itself");
    // A call without a fingerprint is not coalesced either; the server, which
    // compares fingerprints only when both sides have one, lets it wait.
    const unfingerprinted = client.getOrRun(key, () => assert.fail("must not run"), { kind: "thumb" });
    await eventually(() => recorder.count("get") >= 1, 20_000, "the long-poll");
    assert.equal(recorder.count("claim"), 4);
    gate.resolve();
    assert.equal((await running).result, 1);
    const waited = await unfingerprinted;
    assert.equal(waited.result, 1);
    assert.equal(waited.source, "awaited");
  });

  test("one caller's signal only detaches that caller; the last one cancels the shared job", T, async () => {
    const client = ctx.client();
    const other = ctx.client();
    const key = ctx.key("shared");
    const started = deferred();
    const finish = deferred();
    let jobSignal;
    const controllers = [new AbortController(), new AbortController(), new AbortController()];
    const options = (signal) => ({ kind: "job", leaseMs: 30_000, signal });
    const job = async ({ signal }) => {
      jobSignal = signal;
      started.resolve();
      await Promise.race([finish.promise, new Promise((r) => signal.addEventListener("abort", r))]);
      return "done";
    };
    const calls = controllers.map((c) => client.getOrRun(key, job, options(c.signal)));
    await started.promise;
    controllers[1].abort();
    await assert.rejects(calls[1], (err) => err.name === "AbortError");
    assert.equal(jobSignal.aborted, false, "the others still wait on the job");
    controllers[0].abort();
    await assert.rejects(calls[0], (err) => err.name === "AbortError");
    assert.equal(jobSignal.aborted, false);
    finish.resolve();
    const last = await calls[2];
    assert.equal(last.result, "done");
    assert.equal(last.source, "awaited", "a joined caller did not run the job itself");

    // Now every caller goes away: the job is aborted and the lease released.
    const key2 = ctx.key("shared");
    const started2 = deferred();
    const cs = [new AbortController(), new AbortController()];
    let signal2;
    const calls2 = cs.map((c) =>
      client.getOrRun(
        key2,
        async ({ signal }) => {
          signal2 = signal;
          started2.resolve();
          await new Promise((r) => signal.addEventListener("abort", r));
        },
        options(c.signal),
      ),
    );
    await started2.promise;
    cs[0].abort();
    await assert.rejects(calls2[0]);
    assert.equal(signal2.aborted, false);
    cs[1].abort();
    await assert.rejects(calls2[1]);
    assert.equal(signal2.aborted, true);
    assert.equal((await other.claim(key2, { kind: "job" })).state, "acquired", "the lease was released");

    // A new call after a cancelled flight starts afresh instead of joining it.
    const key3 = ctx.key("shared");
    const c3 = new AbortController();
    const started3 = deferred();
    const first = client.getOrRun(
      key3,
      async ({ signal }) => {
        started3.resolve();
        await new Promise((r) => signal.addEventListener("abort", r));
      },
      options(c3.signal),
    );
    await started3.promise;
    c3.abort();
    const fresh = client.getOrRun(key3, async () => "fresh", { kind: "job" });
    await assert.rejects(first);
    assert.equal((await fresh).result, "fresh");
  });
});
