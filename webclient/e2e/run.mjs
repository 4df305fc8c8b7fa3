// `node e2e/run.mjs` (what scripts/test.sh runs) = `npm run e2e`: the end-to-end tests, one file
// at a time, each starting its own stacks on free ports. Extra arguments go to `node --test`
// (e.g. `--test-name-pattern=Stop`).

import { spawnSync } from "node:child_process";
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";

const webclient = dirname(dirname(fileURLToPath(import.meta.url)));
const result = spawnSync(
  process.execPath,
  ["--test", "--test-concurrency=1", ...process.argv.slice(2), "e2e/"],
  { cwd: webclient, stdio: "inherit" },
);
process.exit(result.status ?? 1);
