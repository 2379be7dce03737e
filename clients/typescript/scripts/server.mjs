// Starts and stops the real onceflight binary for the generate script and the
// tests. Only loopback addresses are ever used.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

const packageDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

/**
 * The server binary: env ONCEFLIGHT_BIN, else the workspace's debug build next
 * to this package, else null.
 */
export function findBinary() {
  const fromEnv = process.env.ONCEFLIGHT_BIN;
  if (fromEnv) {
    // A binary named explicitly must exist: silently falling back would test
    // something other than what was asked for.
    if (!existsSync(fromEnv)) throw new Error(`ONCEFLIGHT_BIN=${fromEnv} does not exist`);
    return path.resolve(fromEnv);
  }
  const fallback = path.resolve(packageDir, "../../target/debug/onceflight");
  return existsSync(fallback) ? fallback : null;
}

/** A port that was free a moment ago: listen on port 0, read it, close. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

const running = new Set();

// Children must not outlive the process that started them, whatever way it
// ends; SIGKILL is synchronous enough to run inside an exit handler.
process.on("exit", () => {
  for (const child of running) {
    try {
      child.kill("SIGKILL");
    } catch {
      // The child is already gone.
    }
  }
});

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function startOnce(binary, { store, pgSchema, tokens, extraArgs = [], readyTimeoutMs }) {
  const port = await freePort();
  const args = ["serve", "--bind", `127.0.0.1:${port}`, "--store", store, ...extraArgs];
  if (pgSchema) args.push("--pg-schema", pgSchema);
  const env = { ...process.env, ONCEFLIGHT_LOG_FORMAT: "human", RUST_BACKTRACE: "0" };
  delete env.ONCEFLIGHT_TOKENS;
  delete env.ONCEFLIGHT_TOKENS_FILE;
  delete env.ONCEFLIGHT_STORE;
  delete env.ONCEFLIGHT_PG_SCHEMA;
  delete env.ONCEFLIGHT_BIND;
  if (tokens) env.ONCEFLIGHT_TOKENS = tokens;
  const child = spawn(binary, args, { env, stdio: ["ignore", "ignore", "pipe"] });
  running.add(child);
  let stderr = "";
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (chunk) => {
    // Only the start of the log matters for diagnosing a failed start.
    if (stderr.length < 20_000) stderr += chunk;
  });
  let exited = false;
  const exitPromise = new Promise((resolve) => {
    child.on("exit", () => {
      exited = true;
      running.delete(child);
      resolve();
    });
  });
  const baseUrl = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + readyTimeoutMs;
  while (Date.now() < deadline && !exited) {
    try {
      const res = await fetch(`${baseUrl}/readyz`, { signal: AbortSignal.timeout(2000) });
      await res.arrayBuffer();
      if (res.status === 200) {
        const stop = async () => {
          if (!exited) {
            child.kill("SIGTERM");
            const killTimer = setTimeout(() => child.kill("SIGKILL"), 3000);
            await exitPromise;
            clearTimeout(killTimer);
          }
        };
        return { ok: true, server: { baseUrl, port, child, stop } };
      }
    } catch {
      // Not listening yet.
    }
    await sleep(50);
  }
  if (!exited) {
    child.kill("SIGKILL");
    await exitPromise;
  }
  return { ok: false, stderr };
}

/**
 * Starts `onceflight serve` on a free loopback port and waits for /readyz.
 * A start can lose the race for its port to another process, so it is retried
 * on a fresh port a few times.
 */
export async function startServer(options) {
  const binary = options.binary ?? findBinary();
  if (!binary) throw new Error("no onceflight binary: set ONCEFLIGHT_BIN or run `cargo xtask test`");
  const opts = { readyTimeoutMs: 30_000, ...options };
  let lastStderr = "";
  for (let attempt = 0; attempt < 5; attempt++) {
    const started = await startOnce(binary, opts);
    if (started.ok) return started.server;
    lastStderr = started.stderr;
    // Only a lost race for the port is worth another try; any other failure
    // (a bad flag, an unreachable store) would fail the same way again.
    if (!/address|in use|bind/i.test(lastStderr)) break;
  }
  throw new Error(`onceflight did not start (store ${redact(opts.store)}):\n${lastStderr}`);
}

function redact(url) {
  return String(url).replace(/\/\/[^@/]*@/, "//***@");
}
