// The low-level calls against the real server: status codes, typed errors,
// key encoding and the client-side key checks.
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  FingerprintMismatchError,
  LeaseLostError,
  Onceflight,
  OnceflightError,
  UnavailableError,
} from "../dist/index.js";
import { forEachBackend, recordingFetch, sleep } from "./helpers.mjs";

const T = { timeout: 60_000 };

forEachBackend("low-level calls", (ctx) => {
  test("claim answers acquired (201), in_flight (202), completed (200)", T, async () => {
    const a = ctx.client({ owner: "worker-a" });
    const b = ctx.client({ owner: "worker-b" });
    const key = ctx.key("image");
    const acquired = await a.claim(key, { kind: "image", fingerprint: "fp1", lease_ms: 5000 });
    assert.equal(acquired.state, "acquired");
    assert.equal(acquired.key, key);
    assert.equal(acquired.attempt, 1);
    assert.equal(acquired.takeover, false);
    assert.equal(typeof acquired.token, "number");
    assert.ok(acquired.lease_ms > 0 && acquired.lease_ms <= 5000);
    assert.equal(typeof acquired.lease_expires_at, "string");

    const inFlight = await b.claim(key, { kind: "image", fingerprint: "fp1" });
    assert.equal(inFlight.state, "in_flight");
    assert.equal(inFlight.token, acquired.token);
    assert.ok(inFlight.retry_after_ms > 0);
    assert.equal(inFlight.owner, "worker-a", "the client's owner is sent by default");

    const beat = await a.heartbeat(key, acquired.token, 4000);
    assert.ok(beat.lease_ms > 0 && beat.lease_ms <= 4000);
    assert.equal(typeof beat.lease_expires_at, "string");
    assert.ok(await a.heartbeat(key, acquired.token), "a heartbeat without lease_ms keeps the lease's own");

    const record = await a.complete(key, acquired.token, { url: "https://example.invalid/1.png", n: 1 });
    assert.equal(record.state, "completed");
    assert.deepEqual(record.result, { url: "https://example.invalid/1.png", n: 1 });
    assert.equal(record.kind, "image");
    assert.equal(record.fingerprint, "fp1");

    // Repeating complete with the same token succeeds, and the first result stands.
    const again = await a.complete(key, acquired.token, { other: true });
    assert.equal(again.state, "completed");
    assert.deepEqual(again.result, { url: "https://example.invalid/1.png", n: 1 });

    const cached = await b.claim(key, { kind: "image", fingerprint: "fp1" });
    assert.equal(cached.state, "completed");
    assert.deepEqual(cached.result, { url: "https://example.invalid/1.png", n: 1 });
    assert.equal(cached.token, acquired.token);
    assert.equal(typeof cached.completed_at, "string");

    const got = await b.get(key);
    assert.equal(got.state, "completed");
    assert.equal(got.key, key);
    assert.equal(await b.delete(key), true);
    assert.equal(await b.delete(key), false);
    assert.equal(await b.get(key), null);
  });

  test("a stale token gets LeaseLostError (409) from every fenced call", T, async () => {
    const c = ctx.client();
    const key = ctx.key("stale");
    const first = await c.claim(key, { kind: "job", lease_ms: 200 });
    await sleep(400);
    const second = await c.claim(key, { kind: "job", lease_ms: 5000 });
    assert.equal(second.state, "acquired");
    assert.equal(second.takeover, true);
    assert.equal(second.attempt, 2);
    assert.ok(second.token > first.token, "tokens strictly increase");
    for (const call of [
      () => c.heartbeat(key, first.token),
      () => c.complete(key, first.token, "stale"),
      () => c.fail(key, first.token, "stale"),
      () => c.release(key, first.token),
    ]) {
      await assert.rejects(call(), (err) => {
        assert.ok(err instanceof LeaseLostError);
        assert.ok(err instanceof OnceflightError);
        assert.equal(err.code, "lease_lost");
        assert.equal(err.status, 409);
        assert.equal(err.body.error.code, "lease_lost");
        return true;
      });
    }
    const record = await c.get(key);
    assert.equal(record.state, "processing");
    assert.equal(record.token, second.token, "the stale calls changed nothing");
  });

  test("fail, repeated fail, and a failed claim", T, async () => {
    const c = ctx.client();
    const key = ctx.key("fail");
    const { token } = await c.claim(key, { kind: "job", max_attempts: 2, retry_backoff_ms: 60_000 });
    const failed = await c.fail(key, token, "boom");
    assert.equal(failed.state, "failed");
    assert.deepEqual(failed.error, { message: "boom", retryable: true });
    assert.ok(failed.retry_after_ms > 0);
    const repeated = await c.fail(key, token, "boom");
    assert.equal(repeated.state, "failed", "a repeated fail succeeds");
    const claim = await c.claim(key, { kind: "job" });
    assert.equal(claim.state, "failed");
    assert.ok(claim.retry_after_ms > 0);
    assert.equal(claim.error.message, "boom");

    const key2 = ctx.key("fail");
    const second = await c.claim(key2, { kind: "job" });
    const final = await c.fail(key2, second.token, "bad input", false);
    assert.deepEqual(final.error, { message: "bad input", retryable: false });
    assert.equal(final.retry_after_ms, null);
    const claim2 = await c.claim(key2, { kind: "job" });
    assert.equal(claim2.state, "failed");
    assert.equal(claim2.retry_after_ms, null);
  });

  test("release gives the lease up at once; a repeated release is LeaseLostError", T, async () => {
    const a = ctx.client();
    const key = ctx.key("release");
    const first = await a.claim(key, { kind: "job", lease_ms: 60_000 });
    const released = await a.release(key, first.token);
    assert.equal(released.state, "processing");
    assert.equal(released.lease_expired, true);
    await assert.rejects(a.release(key, first.token), LeaseLostError);
    const second = await a.claim(key, { kind: "job" });
    assert.equal(second.state, "acquired");
    assert.equal(second.attempt, first.attempt, "a released lease is not counted as an attempt");
  });

  test("a different kind or fingerprint is FingerprintMismatchError (422)", T, async () => {
    const c = ctx.client();
    const key = ctx.key("fp");
    await c.claim(key, { kind: "image", fingerprint: "aaa" });
    for (const body of [
      { kind: "image", fingerprint: "bbb" },
      { kind: "video", fingerprint: "aaa" },
    ]) {
      await assert.rejects(c.claim(key, body), (err) => {
        assert.ok(err instanceof FingerprintMismatchError);
        assert.equal(err.code, "fingerprint_mismatch");
        assert.equal(err.status, 422);
        assert.equal(err.body.error.code, "fingerprint_mismatch");
        return true;
      });
    }
  });

  test("a wrong or missing bearer token is 401 unauthorized", T, async () => {
    for (const token of ["wrong-token", undefined]) {
      const c = new Onceflight({ baseUrl: ctx.baseUrl, token });
      const key = ctx.key("auth");
      for (const call of [() => c.claim(key, { kind: "job" }), () => c.get(key), () => c.delete(key), () => c.heartbeat(key, 1)]) {
        await assert.rejects(call(), (err) => {
          assert.ok(err instanceof OnceflightError);
          assert.ok(!(err instanceof UnavailableError));
          assert.equal(err.code, "unauthorized");
          assert.equal(err.status, 401);
          assert.equal(err.body.error.code, "unauthorized");
          return true;
        });
      }
    }
  });

  test("invalid requests (400) and too large results (413) are typed", T, async () => {
    const c = ctx.client();
    const key = ctx.key("bad");
    await assert.rejects(c.claim(key, { kind: "Not A Kind" }), (err) => {
      assert.equal(err.code, "invalid_request");
      assert.equal(err.status, 400);
      return true;
    });
    await assert.rejects(c.get(key, { waitMs: 60_001 }), (err) => err.code === "invalid_request" && err.status === 400);
    const { token } = await c.claim(key, { kind: "job" });
    await assert.rejects(c.complete(key, token, "x".repeat(1_100_000)), (err) => {
      assert.equal(err.code, "too_large");
      assert.equal(err.status, 413);
      return true;
    });
  });

  test("keys with |, /, spaces, non-ASCII and dots round-trip", T, async () => {
    const c = ctx.client();
    const suffix = Math.random().toString(36).slice(2);
    const keys = [
      `image|ab-${suffix}`,
      `a/b/c-${suffix}`,
      `with space ${suffix}`,
      `naïve ключ 🚀 ${suffix}`,
      `file.name.${suffix}`,
      `..${suffix}`,
      `${suffix}/..`,
      `%2F?x=1#frag&y=+${suffix}`,
      `é`.repeat(250) + suffix.slice(0, 6),
    ];
    for (const key of keys) {
      const claim = await c.claim(key, { kind: "job" });
      assert.equal(claim.state, "acquired", key);
      assert.equal(claim.key, key);
      await c.complete(key, claim.token, { key });
      const record = await c.get(key);
      assert.equal(record.key, key);
      assert.deepEqual(record.result, { key });
      assert.equal(await c.delete(key), true, key);
      assert.equal(await c.get(key), null, key);
    }
  });

  test("invalid keys are refused client-side without a request", T, async () => {
    const recorder = recordingFetch();
    const c = ctx.client({ fetch: recorder });
    const bad = ["", ".", "..", "a\nb", "tab\there", "nul\u0000", "del\u007f", "c1\u0085", "x".repeat(513), "é".repeat(257), "lone\uD800"];
    for (const key of bad) {
      for (const call of [
        () => c.claim(key, { kind: "job" }),
        () => c.heartbeat(key, 1),
        () => c.complete(key, 1, null),
        () => c.fail(key, 1, "m"),
        () => c.release(key, 1),
        () => c.get(key),
        () => c.delete(key),
        () => c.getOrRun(key, () => 1, { kind: "job" }),
      ]) {
        await assert.rejects(call(), (err) => {
          assert.ok(err instanceof OnceflightError, JSON.stringify(key));
          assert.equal(err.code, "invalid_key");
          assert.equal(err.status, 0);
          return true;
        });
      }
    }
    assert.equal(recorder.calls.length, 0, "no request was sent");
    // 512 bytes is still a valid key.
    const edge = "é".repeat(256);
    assert.ok(await c.get(edge) === null || true);
    assert.equal(recorder.calls.length, 1);
    // Tokens beyond 2^53-1 cannot be represented and are refused too.
    await assert.rejects(c.heartbeat("k", 2 ** 53), (err) => err.code === "invalid_request" && err.status === 0);
  });

  test("get with waitMs is held until the record settles", T, async () => {
    const c = ctx.client();
    const key = ctx.key("wait");
    const { token } = await c.claim(key, { kind: "job", lease_ms: 30_000 });
    let settled = false;
    const waiting = c.get(key, { waitMs: 30_000 }).then((r) => {
      settled = true;
      return r;
    });
    await sleep(300);
    assert.equal(settled, false, "the long-poll is held while the lease is live");
    await c.complete(key, token, 42);
    const record = await waiting;
    assert.equal(record.state, "completed");
    assert.equal(record.result, 42);
  });

  test("list pages through the records a query selects; stats counts them", T, async () => {
    const c = ctx.client();
    const prefix = ctx.key("listing");
    const keys = [];
    for (let i = 0; i < 5; i++) {
      const key = `${prefix}-${i}`;
      const { token } = await c.claim(key, { kind: "job", lease_ms: 30_000 });
      if (i < 2) await c.complete(key, token, { n: i });
      keys.push(key);
    }
    const all = [];
    for await (const record of c.listAll({ prefix, limit: 2, order: "oldest" })) all.push(record);
    assert.deepEqual(all.map((r) => r.key).sort(), [...keys].sort(), "every record, once");
    assert.ok(all.every((r) => r.result === null), "listings carry no result");
    const done = await c.list({ prefix, state: "completed" });
    assert.deepEqual(done.records.map((r) => r.key).sort(), keys.slice(0, 2).sort());
    assert.equal(done.next_cursor, null, "one page holds them");
    const stuck = await c.list({ prefix, stuck: true });
    assert.equal(stuck.records.length, 0, "no lease ran out");
    await assert.rejects(
      c.list({ cursor: "not-a-cursor" }),
      (err) => err instanceof OnceflightError && err.code === "invalid_request" && err.status === 400,
    );
    const stats = await c.stats();
    assert.ok(stats.records.total >= 5, `counted: ${JSON.stringify(stats)}`);
    assert.ok(stats.records.completed >= 2 && stats.leases.live >= 3);
    assert.equal(typeof stats.as_of, "string");
  });
});
