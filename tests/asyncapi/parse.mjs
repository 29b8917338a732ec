// Parses AsyncAPI documents with the AsyncAPI project's own parser; prints one JSON line per file:
// {"file": ..., "errors": [...], "warnings": n}. Run with NODE_PATH pointing at an install of @asyncapi/parser.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { join } from "node:path";

const require = createRequire(join(process.env.ASYNCAPI_PARSER_DIR, "package.json"));
const { Parser } = require("@asyncapi/parser");
const parser = new Parser();
for (const file of process.argv.slice(2)) {
  const { document, diagnostics } = await parser.parse(readFileSync(file, "utf8"));
  const errors = diagnostics.filter((d) => d.severity === 0).map((d) => `${d.path.join("/")}: ${d.message}`);
  console.log(JSON.stringify({
    file, errors, parsed: document !== undefined, warnings: diagnostics.filter((d) => d.severity === 1).length,
    messages: document ? document.allMessages().length : 0,
  }));
}
