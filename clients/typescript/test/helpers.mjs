// Shared test plumbing: which backends to run on, starting and stopping the
// real server for each, unique keys, counting fetch wrappers and child
// processes that are always killed.
import { execFile, fork } from "node:child_process";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Onceflight } from "../dist/index.js";
import { findBinary, startServer } from "../scripts/server.mjs";

export const testDir = path.dirname(fileURLToPath(import.meta.url));
export const REQUIRE_BACKENDS = process.env.ONCEFLIGHT_REQUIRE_BACKENDS === "1";
/** Every server the tests start demands one of these bearer tokens. */
export const TOKEN = "ts-client-test-token-0001";
const TOKENS = `tests:${TOKEN},others:ts-client-other-token-0002`;

let binaryProblem;
let binary;
try {
  binary = findBinary();
  if (!binary) binaryProblem = "no onceflight binary: set ONCEFLIGHT_BIN, or run `cargo xtask test`, which builds it and runs these tests";
} catch (err) {
  binaryProblem = `${err.message ?? err}; run \`cargo xtask test\`, which builds the binary and runs these tests`;
}

function loud(message) {
  console.warn(`\n*** onceflight TypeScript client tests: ${message} ***\n`);
}

let schemaCounter = 0;

/** The stores to run the behaviour tests on, with why one is unavailable. */
export function backends() {
  const list = [{ name: "memory", problem: binaryProblem, store: "memory://" }];
  const databaseUrl = process.env.DATABASE_URL;
  list.push({
    name: "postgres",
    problem: binaryProblem ?? (databaseUrl ? undefined : "DATABASE_URL is not set, so the Postgres variant is skipped"),
    store: databaseUrl,
    postgres: true,
  });
  return list;
}

/**
 * Declares `body` once per backend, inside a suite that starts a server
 * before its tests and stops it after them. A missing backend skips the suite
 * loudly, or fails it when ONCEFLIGHT_REQUIRE_BACKENDS=1.
 */
export function forEachBackend(title, body, { only } = {}) {
  for (const backend of backends()) {
    if (only && !only.includes(backend.name)) continue;
    const name = `${title} [${backend.name}]`;
    if (backend.problem) {
      if (REQUIRE_BACKENDS) {
        test(name, () => {
          throw new Error(`${backend.problem} (ONCEFLIGHT_REQUIRE_BACKENDS=1)`);
        });
      } else {
        loud(`SKIPPING ${name}: ${backend.problem}`);
        test(name, { skip: backend.problem }, () => {});
      }
      continue;
    }
    describe(name, () => {
      const ctx = new BackendContext(backend);
      before(() => ctx.start(), { timeout: 60_000 });
      after(() => ctx.stop(), { timeout: 30_000 });
      body(ctx);
    });
  }
}

/** The binary, or a loud skip / failure when there is none (for tests that need no store). */
export function requireBinary(name) {
  if (!binaryProblem) return binary;
  if (REQUIRE_BACKENDS) {
    test(name, () => {
      throw new Error(`${binaryProblem} (ONCEFLIGHT_REQUIRE_BACKENDS=1)`);
    });
  } else {
    loud(`SKIPPING ${name}: ${binaryProblem}`);
    test(name, { skip: binaryProblem }, () => {});
  }
  return null;
}

export class BackendContext {
  constructor(backend) {
    this.backend = backend;
    this.server = undefined;
    this.schema = undefined;
    this.children = new Set();
  }

  async start() {
    const options = { binary, store: this.backend.store, tokens: TOKENS };
    if (this.backend.postgres) {
      // A schema of its own per server keeps parallel runs and earlier runs
      // from seeing each other's records.
      this.schema = `of_ts_${process.pid}_${Date.now().toString(36)}_${schemaCounter++}`;
      options.pgSchema = this.schema;
    }
    this.server = await startServer(options);
  }

  async stop() {
    for (const child of this.children) child.kill("SIGKILL");
    await this.server?.stop();
    if (this.schema) await dropSchema(this.backend.store, this.schema);
  }

  get baseUrl() {
    return this.server.baseUrl;
  }

  /** A client of this backend's server with the right token. */
  client(options = {}) {
    return new Onceflight({ baseUrl: this.baseUrl, token: TOKEN, ...options });
  }

  /** A key no other test uses. */
  key(prefix = "k") {
    return `${prefix}|${randomUUID()}`;
  }

  /** Forks a test worker process that uses the client; it is killed when the suite ends. */
  fork(script, config) {
    const child = fork(path.join(testDir, "fixtures", script), [JSON.stringify(config)], {
      stdio: ["ignore", "inherit", "inherit", "ipc"],
    });
    this.children.add(child);
    trackChild(child);
    child.on("exit", () => this.children.delete(child));
    return child;
  }
}

const liveChildren = new Set();
function trackChild(child) {
  liveChildren.add(child);
  child.on("exit", () => liveChildren.delete(child));
}
process.on("exit", () => {
  for (const child of liveChildren) {
    try {
      child.kill("SIGKILL");
    } catch {
      // Already gone.
    }
  }
});

/** Drops a test schema when psql is at hand; a leftover schema harms nothing. */
function dropSchema(databaseUrl, schema) {
  return new Promise((resolve) => {
    execFile(
      "psql",
      [databaseUrl, "-q", "-c", `DROP SCHEMA IF EXISTS "${schema}" CASCADE`],
      { timeout: 15_000 },
      () => resolve(),
    );
  });
}

/** Resolves on a child's next message that satisfies `predicate`; rejects if it exits first. */
export function nextMessage(child, predicate = () => true) {
  return new Promise((resolve, reject) => {
    const onMessage = (message) => {
      if (!predicate(message)) return;
      cleanup();
      resolve(message);
    };
    const onExit = (code, signal) => {
      cleanup();
      reject(new Error(`worker exited (code ${code}, signal ${signal}) before the expected message`));
    };
    const cleanup = () => {
      child.off("message", onMessage);
      child.off("exit", onExit);
    };
    child.on("message", onMessage);
    child.on("exit", onExit);
  });
}

export function exited(child) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once("exit", () => resolve()));
}

/**
 * A fetch that records every request (method and last path segment) and lets
 * a test delay, fail or answer requests in its place.
 */
export function recordingFetch(intercept) {
  const calls = [];
  const wrapped = async (url, init = {}) => {
    const u = new URL(url);
    const parts = u.pathname.split("/");
    const last = parts[parts.length - 1];
    const op =
      init.method === "GET" ? "get" : init.method === "DELETE" ? "delete" : ["claim", "heartbeat", "complete", "fail", "release"].includes(last) ? last : "other";
    const call = { op, url: String(url), init, index: calls.length };
    calls.push(call);
    if (intercept) {
      const replaced = await intercept(call, () => fetch(url, init));
      if (replaced !== undefined) return replaced;
    }
    return fetch(url, init);
  };
  wrapped.calls = calls;
  wrapped.count = (op) => calls.filter((c) => c.op === op).length;
  return wrapped;
}

export function deferred() {
  let resolve;
  let reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `check` until it returns a truthy value, for at most `timeoutMs`. */
export async function eventually(check, timeoutMs = 20_000, what = "condition") {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}
