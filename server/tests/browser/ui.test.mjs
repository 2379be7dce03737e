// The dashboard (/ui) in a real headless Chromium against the real server
// binary: records in every state are made through the HTTP API, then the
// page must show them, count them, count down leases, open and delete them,
// render hostile keys, owners and messages as text, refuse a wrong token
// visibly, and talk to nothing but its own server.
//
// Environment: ONCEFLIGHT_BIN (the server binary; default: the workspace's
// debug build), CHROMIUM (default /usr/bin/chromium), ONCEFLIGHT_ARTIFACTS
// (screenshots; default <repo>/target/ui-artifacts) and
// ONCEFLIGHT_UPDATE_SCREENSHOT=1 (also copy the main screenshot to
// docs/ui.png, the README's picture). `cargo xtask browser` sets the first
// three and runs this.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, "../../..");
const artifacts = process.env.ONCEFLIGHT_ARTIFACTS || path.join(repo, "target", "ui-artifacts");
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";

// Tokens must be at least 16 characters; `other` is a second namespace whose
// records the first must never see.
const TOKEN = "secret-token-0123456789";
const OTHER_TOKEN = "other-token-0123456789";
const XSS_KEY = "<img src=x onerror=alert(1)>";
const HTML_OWNER = '<b onmouseover="alert(2)">owner</b>';
const HTML_MESSAGE = "<script>alert(3)</script><img src=y onerror=alert(4)>";
const RESULT = { answer: 42, frames: [{ width: 640, height: 480 }], note: "rendered once, shared" };

function binary() {
  const fromEnv = process.env.ONCEFLIGHT_BIN;
  if (fromEnv) {
    if (!existsSync(fromEnv)) throw new Error(`ONCEFLIGHT_BIN=${fromEnv} does not exist`);
    return fromEnv;
  }
  const fallback = path.join(repo, "target", "debug", "onceflight");
  if (!existsSync(fallback)) {
    throw new Error("no onceflight binary: set ONCEFLIGHT_BIN, or run `cargo xtask browser`, which builds it");
  }
  return fallback;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Starts `onceflight serve` on a free loopback port and waits for /readyz.
async function startServer() {
  const port = await freePort();
  const env = {
    ...process.env,
    ONCEFLIGHT_TOKENS: `ops:${TOKEN},other:${OTHER_TOKEN}`,
    // Counts are read fresh on every request, so the page and the test's own
    // reads agree on them.
    ONCEFLIGHT_STATS_MAX_AGE_MS: "0",
    ONCEFLIGHT_LOG_FORMAT: "human",
    RUST_BACKTRACE: "0",
  };
  for (const name of ["ONCEFLIGHT_TOKENS_FILE", "ONCEFLIGHT_STORE", "ONCEFLIGHT_BIND", "ONCEFLIGHT_PG_SCHEMA"]) delete env[name];
  const child = spawn(binary(), ["serve", "--bind", `127.0.0.1:${port}`, "--store", "memory://"], {
    env,
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (chunk) => {
    if (stderr.length < 20_000) stderr += chunk;
  });
  process.on("exit", () => child.kill("SIGKILL"));
  const baseUrl = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline && child.exitCode === null) {
    try {
      const res = await fetch(`${baseUrl}/readyz`);
      await res.arrayBuffer();
      if (res.ok) return { baseUrl, port, child };
    } catch {
      // Not listening yet.
    }
    await sleep(50);
  }
  child.kill("SIGKILL");
  throw new Error(`onceflight did not start:\n${stderr}`);
}

// The HTTP API, as a client with a token would use it.
class Api {
  constructor(baseUrl, token) {
    this.baseUrl = baseUrl;
    this.token = token;
  }

  async call(method, pathAndQuery, body) {
    const res = await fetch(`${this.baseUrl}${pathAndQuery}`, {
      method,
      headers: {
        Authorization: `Bearer ${this.token}`,
        ...(body === undefined ? {} : { "Content-Type": "application/json" }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, json: text ? JSON.parse(text) : null };
  }

  async claim(key, body) {
    const reply = await this.call("POST", `/v1/requests/${encodeURIComponent(key)}/claim`, body);
    assert.ok([200, 201, 202].includes(reply.status), `claim ${key}: ${reply.status} ${JSON.stringify(reply.json)}`);
    return reply.json;
  }

  async acquire(key, body) {
    const claim = await this.claim(key, body);
    assert.equal(claim.state, "acquired", `claim ${key} should acquire: ${JSON.stringify(claim)}`);
    return claim.token;
  }

  async complete(key, kind, result, owner) {
    const token = await this.acquire(key, { kind, owner });
    const reply = await this.call("POST", `/v1/requests/${encodeURIComponent(key)}/complete`, { token, result });
    assert.equal(reply.status, 200, `complete ${key}: ${JSON.stringify(reply.json)}`);
  }

  async fail(key, kind, message, retryable, owner) {
    const token = await this.acquire(key, { kind, owner });
    const reply = await this.call("POST", `/v1/requests/${encodeURIComponent(key)}/fail`, { token, message, retryable });
    assert.equal(reply.status, 200, `fail ${key}: ${JSON.stringify(reply.json)}`);
  }

  async record(key) {
    return this.call("GET", `/v1/requests/${encodeURIComponent(key)}`);
  }

  async stats() {
    const reply = await this.call("GET", "/v1/stats");
    assert.equal(reply.status, 200, `stats: ${JSON.stringify(reply.json)}`);
    return reply.json;
  }
}

// Polls `check` (which throws until it holds) for up to `ms`.
async function eventually(check, ms = 10_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      return await check();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await sleep(100);
    }
  }
}

// The keys of a table's rows, as the page shows them.
async function rowKeys(page, table) {
  return page.$$eval(`#${table}-rows tr[data-key]`, (rows) => rows.map((r) => r.dataset.key).sort());
}

describe("the dashboard in Chromium", () => {
  let server;
  let browser;
  let page;
  let api;
  const dialogs = [];
  const requests = [];
  const failedRequests = [];
  const cspConsole = [];

  before(async () => {
    mkdirSync(artifacts, { recursive: true });
    server = await startServer();
    api = new Api(server.baseUrl, TOKEN);
    browser = await chromium.launch({ executablePath: chromiumPath, args: ["--no-sandbox"] });
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    page = await context.newPage();
    // Any dialog at all is a failure: the page asks its confirmations in its
    // own DOM, so an alert can only come from injected script.
    page.on("dialog", (dialog) => {
      dialogs.push(`${dialog.type()}: ${dialog.message()}`);
      dialog.dismiss().catch(() => {});
    });
    page.on("request", (request) => requests.push(request.url()));
    page.on("requestfailed", (request) => failedRequests.push(`${request.url()} ${request.failure()?.errorText}`));
    page.on("console", (message) => {
      if (/Content Security Policy|Refused to/i.test(message.text())) cspConsole.push(message.text());
    });
    // Playwright's init scripts are not subject to the page's policy, so this
    // listener sees every violation, reported or not.
    await page.addInitScript(() => {
      window.__cspViolations = [];
      document.addEventListener("securitypolicyviolation", (e) => {
        window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`);
      });
    });
  });

  after(async () => {
    await browser?.close();
    if (server) {
      server.child.kill("SIGTERM");
      await new Promise((resolve) => (server.child.exitCode === null ? server.child.on("exit", resolve) : resolve()));
    }
  });

  test("the page refuses to show data without a token", async () => {
    await page.goto(`${server.baseUrl}/ui`);
    await page.waitForSelector("#banner:not(.hidden)");
    assert.match(await page.textContent("#banner"), /401|token/);
    assert.equal((await page.$$("tbody tr[data-key]")).length, 0, "no data rows without a token");
  });

  test("seeded records in every state are counted and listed", async () => {
    // Ordinary records, as a fleet of workers would leave them.
    await api.complete("thumb|sunset.jpg", "thumbnail", RESULT, "worker-a");
    await api.complete("thumb|beach.jpg", "thumbnail", { width: 320 }, "worker-b");
    await api.complete("report|2026-q3", "report", { rows: 1200 }, "worker-a");
    await api.fail("report|2026-q2", "report", "upstream database timed out", true, "worker-c");
    await api.fail("thumb|broken.gif", "thumbnail", "unsupported image format", false, "worker-b");
    await api.acquire("render|movie-7", { kind: "render", owner: "worker-live", lease_ms: 600_000 });
    await api.acquire("render|movie-8", { kind: "render", owner: "worker-slow", lease_ms: 300_000 });
    await api.acquire("render|crashed", { kind: "render", owner: "worker-gone", lease_ms: 300 });
    await api.acquire("render|crashed-2", { kind: "render", owner: "worker-gone", lease_ms: 300 });
    // A big result, to be cut in the detail view.
    await api.complete("export|big", "export", { blob: "x".repeat(30_000) }, "worker-a");
    // Hostile values: a key that is markup, an owner and a message with
    // markup and handlers. They must show as the literal text.
    await api.complete(XSS_KEY, "thumbnail", { html: "<img src=z onerror=alert(5)>" }, HTML_OWNER);
    await api.fail("report|hostile", "report", HTML_MESSAGE, false, HTML_OWNER);
    // Another namespace's record must never show.
    const other = new Api(server.baseUrl, OTHER_TOKEN);
    await other.complete("thumb|not-yours", "thumbnail", { secret: true }, "someone-else");
    await sleep(700); // The 300 ms leases are over: stuck.

    await page.fill("#token-input", TOKEN);
    await page.click("#token-save");
    assert.equal(await page.inputValue("#token-input"), "", "the token box is emptied once the token is kept");

    // Some claim traffic while the page samples /metrics, so the chart has
    // something to show: hits on completed records, new work, a takeover.
    for (let i = 0; i < 6; i++) {
      for (let n = 0; n < 3 + i; n++) await api.claim("thumb|sunset.jpg", { kind: "thumbnail" });
      await api.acquire(`thumb|batch-${i}`, { kind: "thumbnail", owner: "worker-a", lease_ms: 600_000 });
      if (i === 3) {
        const takeover = await api.claim("render|crashed-2", { kind: "render", owner: "worker-b", lease_ms: 600_000 });
        assert.equal(takeover.takeover, true, "the expired lease is taken over");
      }
      if (i === 4) await api.claim("thumb|broken.gif", { kind: "thumbnail" });
      await sleep(1000);
    }

    const stats = await api.stats();
    await eventually(async () => {
      const shown = {
        processing: await page.textContent("#count-processing"),
        completed: await page.textContent("#count-completed"),
        failed: await page.textContent("#count-failed"),
        total: await page.textContent("#count-total"),
        live: await page.textContent("#leases-live"),
        expired: await page.textContent("#leases-expired"),
      };
      assert.deepEqual(shown, {
        processing: String(stats.records.processing),
        completed: String(stats.records.completed),
        failed: String(stats.records.failed),
        total: String(stats.records.total),
        live: String(stats.leases.live),
        expired: String(stats.leases.expired),
      });
    });
    assert.deepEqual(
      stats.records,
      { processing: 10, completed: 5, failed: 3, total: 18 },
      "the counts the page matched are the seeded ones",
    );
    assert.notEqual(await page.textContent("#oldest-lease"), "none", "a live lease has an age");
    assert.ok(await page.isHidden("#banner"), "no error banner with a good token");

    assert.deepEqual(
      await rowKeys(page, "inflight"),
      ["render|crashed-2", "render|movie-7", "render|movie-8", ...[0, 1, 2, 3, 4, 5].map((i) => `thumb|batch-${i}`)].sort(),
    );
    assert.deepEqual(await rowKeys(page, "stuck"), ["render|crashed"]);
    assert.deepEqual(await rowKeys(page, "failed"), ["report|2026-q2", "report|hostile", "thumb|broken.gif"].sort());
    assert.deepEqual(
      await rowKeys(page, "completed"),
      [XSS_KEY, "export|big", "report|2026-q3", "thumb|beach.jpg", "thumb|sunset.jpg"].sort(),
    );
    const row = (table, key) => page.locator(`#${table}-rows tr`).filter({ has: page.getByRole("button", { name: key, exact: true }) });
    assert.equal(await row("inflight", "render|movie-7").locator("td").nth(2).textContent(), "worker-live");
    assert.equal(await row("failed", "thumb|broken.gif").locator("td").nth(4).textContent(), "never");
    assert.notEqual(await row("failed", "report|2026-q2").locator("td").nth(4).textContent(), "never");
    assert.equal(await row("failed", "report|2026-q2").locator("td").nth(3).textContent(), "yes");
    assert.equal(await row("failed", "report|2026-q2").locator("td").nth(2).textContent(), "upstream database timed out");

    // The chart draws its four series, and has seen some claims.
    assert.equal(await page.locator("#chart svg polyline").count(), 4);
    const heights = await page.$eval("#chart polyline.claims", (line) =>
      line.getAttribute("points").split(" ").map((point) => point.split(",")[1]),
    );
    assert.ok(new Set(heights).size > 1, "the claims line is not flat after claim traffic");

    await page.screenshot({ path: path.join(artifacts, "ui-full.png"), fullPage: true });
    await page.screenshot({ path: path.join(artifacts, "ui.png") });
    // The README's picture is replaced only when asked: its bytes differ on
    // every run (times, countdowns), and a test run must not dirty the tree.
    const docsPicture = path.join(repo, "docs", "ui.png");
    if (process.env.ONCEFLIGHT_UPDATE_SCREENSHOT === "1" || !existsSync(docsPicture)) {
      copyFileSync(path.join(artifacts, "ui.png"), docsPicture);
    }
  });

  test("lease countdowns tick", async () => {
    const cell = page.locator('#inflight-rows tr[data-key="render|movie-7"] td.countdown');
    const first = await cell.textContent();
    assert.match(first, /\d+ min \d+ s|\d+ s/);
    await sleep(2200);
    const second = await cell.textContent();
    assert.notEqual(second, first, "the countdown moved within 2 s");
  });

  test("hostile values are shown as text and never run", async () => {
    const button = page.getByRole("button", { name: XSS_KEY, exact: true });
    assert.equal(await button.count(), 1, "the markup key is one button, as text");
    assert.equal(await button.textContent(), XSS_KEY);
    assert.equal(await page.locator("img").count(), 0, "no img element anywhere on the page");
    const owners = await page.$$eval("#completed-rows td", (cells) => cells.map((c) => c.textContent));
    assert.ok(owners.includes(HTML_OWNER), "the markup owner is shown literally");
    const messages = await page.$$eval("#failed-rows td.message", (cells) => cells.map((c) => c.textContent));
    assert.ok(messages.includes(HTML_MESSAGE), "the markup message is shown literally");
    assert.equal(await page.locator("#failed-rows b, #completed-rows b, script:not([src])").count(), 0);
    await button.click();
    await page.waitForSelector("#detail[open]");
    await eventually(async () => assert.match(await page.textContent("#detail-result"), /onerror=alert\(5\)/));
    assert.equal(await page.locator("img").count(), 0, "the result's markup stays text");
    await page.click("#detail-close");
    assert.deepEqual(dialogs, [], "no alert or other dialog fired");
  });

  test("a key opens its detail with the pretty-printed result", async () => {
    await page.getByRole("button", { name: "thumb|sunset.jpg", exact: true }).click();
    await page.waitForSelector("#detail[open]");
    await eventually(async () => assert.equal(await page.textContent("#detail-result"), JSON.stringify(RESULT, null, 2)));
    assert.equal(await page.textContent("#detail-title"), "thumb|sunset.jpg");
    const fields = await page.$$eval("#detail-fields dt", (dts) => dts.map((dt) => dt.textContent));
    for (const name of ["state", "kind", "owner", "token", "attempt", "completed_at", "expires_at"]) {
      assert.ok(fields.includes(name), `the detail lists ${name}`);
    }
    await page.screenshot({ path: path.join(artifacts, "detail.png") });
    await page.click("#detail-close");

    await page.getByRole("button", { name: "export|big", exact: true }).click();
    await eventually(async () => assert.match(await page.textContent("#detail-result-note"), /Truncated/));
    assert.ok((await page.textContent("#detail-result")).length <= 20_000, "a large result is cut");
    await page.click("#detail-close");
  });

  test("filters narrow every table", async () => {
    await page.fill("#filter-prefix", "report|");
    await eventually(async () => {
      assert.deepEqual(await rowKeys(page, "completed"), ["report|2026-q3"]);
      assert.deepEqual(await rowKeys(page, "failed"), ["report|2026-q2", "report|hostile"]);
      assert.deepEqual(await rowKeys(page, "inflight"), []);
    });
    await page.fill("#filter-prefix", "");
    await page.fill("#filter-kind", "render");
    await eventually(async () => {
      assert.deepEqual(await rowKeys(page, "completed"), []);
      assert.deepEqual(await rowKeys(page, "stuck"), ["render|crashed"]);
      assert.deepEqual(await rowKeys(page, "inflight"), ["render|crashed-2", "render|movie-7", "render|movie-8"]);
    });
    await page.fill("#filter-kind", "");
    await eventually(async () => assert.equal((await rowKeys(page, "completed")).length, 5));
  });

  test("delete asks first, then removes the record", async () => {
    const key = "thumb|beach.jpg";
    const row = page.locator(`#completed-rows tr[data-key="${key}"]`);
    await row.getByRole("button", { name: "Delete" }).click();
    await page.waitForSelector("#confirm[open]");
    assert.equal(await page.textContent("#confirm-key"), key);
    // Cancel keeps it.
    await page.click("#confirm-cancel");
    await sleep(300);
    assert.equal((await api.record(key)).status, 200, "cancel deletes nothing");
    await row.getByRole("button", { name: "Delete" }).click();
    await page.waitForSelector("#confirm[open]");
    await page.click("#confirm-delete");
    await eventually(async () => assert.equal(await row.count(), 0, "the row is gone"));
    assert.equal((await api.record(key)).status, 404, "the record is gone");
    assert.deepEqual(dialogs, [], "the confirmation is the page's own, not a browser dialog");
  });

  test("a wrong token shows an error and no data", async () => {
    await page.click("#token-forget");
    await page.fill("#token-input", "wrong-token-0123456789");
    await page.click("#token-save");
    await page.waitForSelector("#banner:not(.hidden)");
    assert.match(await page.textContent("#banner"), /refused this token|401/);
    await eventually(async () => assert.equal((await page.$$("tbody tr")).length, 0, "no rows at all"));
    assert.equal(await page.textContent("#count-total"), "–");
    await page.screenshot({ path: path.join(artifacts, "wrong-token.png") });
    assert.equal(
      await page.evaluate(() => sessionStorage.getItem("onceflight.token")),
      "wrong-token-0123456789",
      "the token lives in sessionStorage",
    );
  });

  test("the page talked only to its own server, within its policy", async () => {
    assert.ok(requests.length > 10, "the page made its requests");
    const foreign = requests.filter((url) => !url.startsWith(`${server.baseUrl}/`));
    assert.deepEqual(foreign, [], "every request went to the server itself");
    assert.ok(
      requests.every((url) => !url.includes(TOKEN) && !url.includes("wrong-token")),
      "the token never appears in a URL",
    );
    assert.deepEqual(failedRequests, [], "no request failed");
    assert.deepEqual(cspConsole, [], "no CSP complaint on the console");
    assert.deepEqual(await page.evaluate(() => window.__cspViolations), [], "no CSP violation");
    assert.deepEqual(dialogs, []);
  });
});
