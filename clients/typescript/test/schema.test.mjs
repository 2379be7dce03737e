// The committed src/schema.ts must be exactly what `npm run generate` would
// write from the server's live /openapi.json.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { test } from "node:test";
import { renderSchema } from "../scripts/render-schema.mjs";
import { startServer } from "../scripts/server.mjs";
import { requireBinary, testDir } from "./helpers.mjs";

const NAME = "the generated types match the server's /openapi.json";
const binary = requireBinary(NAME);
if (binary) {
  test(NAME, { timeout: 60_000 }, async () => {
    const server = await startServer({ binary, store: "memory://" });
    try {
      const res = await fetch(`${server.baseUrl}/openapi.json`);
      assert.equal(res.status, 200);
      const expected = await renderSchema(await res.json());
      const committed = await readFile(path.join(testDir, "..", "src", "schema.ts"), "utf8");
      assert.ok(
        committed === expected,
        "src/schema.ts is out of date with the server's API: run `ONCEFLIGHT_BIN=<path to onceflight> npm run generate` and commit the result",
      );
    } finally {
      await server.stop();
    }
  });
}
