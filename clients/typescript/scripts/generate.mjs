// `npm run generate`: starts the server binary named by ONCEFLIGHT_BIN (or the
// workspace's debug build), fetches its /openapi.json and writes src/schema.ts.
import { writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { renderSchema } from "./render-schema.mjs";
import { findBinary, startServer } from "./server.mjs";

const packageDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const binary = findBinary();
if (!binary) {
  console.error("generate: set ONCEFLIGHT_BIN to the onceflight binary (or build it with `cargo build`).");
  process.exit(1);
}
const server = await startServer({ binary, store: "memory://" });
try {
  const res = await fetch(`${server.baseUrl}/openapi.json`);
  if (res.status !== 200) throw new Error(`GET /openapi.json answered ${res.status}`);
  const source = await renderSchema(await res.json());
  const target = path.join(packageDir, "src", "schema.ts");
  await writeFile(target, source);
  console.log(`generate: wrote ${path.relative(process.cwd(), target)} (${source.length} bytes)`);
} finally {
  await server.stop();
}
