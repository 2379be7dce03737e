// End to end across processes: a worker killed mid-job, and a herd of callers
// from two processes.
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, test } from "node:test";
import { exited, forEachBackend, nextMessage, recordingFetch, TOKEN } from "./helpers.mjs";

const T = { timeout: 90_000 };
const scratch = mkdtempSync(path.join(tmpdir(), "onceflight-ts-"));
after(() => rmSync(scratch, { recursive: true, force: true }));

function lines(file) {
  try {
    return readFileSync(file, "utf8").split("\n").filter(Boolean);
  } catch {
    return [];
  }
}

forEachBackend("crashed worker and herd", (ctx) => {
  test("a worker killed mid-job: the retry waits, takes over after the lease and completes", T, async () => {
    const key = ctx.key("image");
    const runsFile = path.join(scratch, `crash-${ctx.backend.name}.log`);
    const leaseMs = 2500;
    const worker = ctx.fork("worker.mjs", { mode: "hang", baseUrl: ctx.baseUrl, token: TOKEN, key, runsFile, fingerprint: "fp", leaseMs });
    const started = await nextMessage(worker, (m) => m.type === "started");
    assert.equal(started.attempt, 1);
    worker.kill("SIGKILL");
    await exited(worker);

    const recorder = recordingFetch();
    const client = ctx.client({ fetch: recorder, owner: "retry" });
    const before = await client.get(key);
    assert.equal(before.state, "processing");
    assert.equal(before.token, started.token);
    assert.equal(before.lease_expired, false, "the retry starts while the dead worker's lease is still live");

    const jobs = [];
    const outcome = await client.getOrRun(
      key,
      async (job) => {
        jobs.push({ token: job.token, attempt: job.attempt, takeover: job.takeover });
        return { by: "retry", attempt: job.attempt };
      },
      { kind: "image", fingerprint: "fp", leaseMs, waitTimeoutMs: 60_000 },
    );
    // No error, exactly one run, and that run is a takeover: the server only
    // grants one once the dead worker's lease has expired.
    assert.equal(jobs.length, 1);
    assert.equal(jobs[0].takeover, true);
    assert.equal(jobs[0].attempt, 2);
    assert.ok(jobs[0].token > started.token);
    assert.equal(outcome.source, "ran");
    assert.deepEqual(outcome.result, { by: "retry", attempt: 2 });
    assert.equal(outcome.token, jobs[0].token);
    // The wait was a long-poll, not a sleep loop: a handful of requests only.
    assert.ok(recorder.count("get") <= 4, `long-polls: ${recorder.count("get")}`);
    assert.ok(recorder.count("claim") <= 5, `claims: ${recorder.count("claim")}`);

    assert.deepEqual(lines(runsFile), [`dead ${started.token} 1`], "the dead worker ran once and nobody else ran its job");
    const record = await client.get(key);
    assert.equal(record.state, "completed");
    assert.deepEqual(record.result, { by: "retry", attempt: 2 }, "the dead worker's result never appears");
    assert.equal(record.token, jobs[0].token);
    const again = await client.getOrRun(key, () => assert.fail("must not run again"), { kind: "image", fingerprint: "fp" });
    assert.equal(again.source, "cached");
    assert.deepEqual(again.result, { by: "retry", attempt: 2 });
  });

  test("a herd of 50 calls from two processes runs the job once and all share its result", T, async () => {
    const key = ctx.key("herd");
    const runsFile = path.join(scratch, `herd-${ctx.backend.name}.log`);
    const config = { mode: "herd", baseUrl: ctx.baseUrl, token: TOKEN, key, runsFile, fingerprint: "fp", leaseMs: 5000, jobMs: 500, calls: 25 };
    const workers = [ctx.fork("worker.mjs", config), ctx.fork("worker.mjs", config)];
    await Promise.all(workers.map((w) => nextMessage(w, (m) => m.type === "ready")));
    const reports = workers.map((w) => nextMessage(w, (m) => m.type === "results"));
    for (const w of workers) w.send({ type: "go" });
    const results = (await Promise.all(reports)).flatMap((m) => m.results);
    await Promise.all(workers.map(exited));

    assert.equal(results.length, 50);
    const failures = results.filter((r) => !r.ok);
    assert.deepEqual(failures, []);
    assert.equal(lines(runsFile).length, 1, `job runs: ${lines(runsFile).join(", ")}`);
    const first = results[0].result;
    for (const r of results) assert.deepEqual(r.result, first);
    assert.equal(results.filter((r) => r.source === "ran").length, 1);
    const record = await ctx.client().get(key);
    assert.deepEqual(record.result, first);
  });
});
