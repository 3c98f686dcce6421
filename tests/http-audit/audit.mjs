// Runs the graphql-http package's GraphQL-over-HTTP server audits against
// a running server: `node audit.mjs http://127.0.0.1:8080/graphql`.
// Prints each audit that is not ok, then a summary line; exits 1 on any
// warning or error.
import { auditServer } from 'graphql-http';

const url = process.argv[2];
if (!url) {
  console.error('usage: node audit.mjs <url of the GraphQL endpoint>');
  process.exit(2);
}
// No audit may hang the test that runs this.
const timeout = setTimeout(() => {
  console.error('audits did not finish within 60 s');
  process.exit(1);
}, 60_000);

const fetchFn = (input, init) => fetch(input, { ...init, signal: AbortSignal.timeout(20_000) });
const results = await auditServer({ url, fetchFn });
const counts = { ok: 0, warn: 0, error: 0 };
for (const r of results) {
  counts[r.status] += 1;
  if (r.status !== 'ok') {
    let detail = r.reason;
    if (r.response) {
      const body = await r.response.text().catch(() => '');
      detail += ` (${r.response.status} ${r.response.headers.get('content-type') ?? ''}: ${body.slice(0, 200)})`;
    }
    console.log(`${r.status.toUpperCase()} ${r.id} ${r.name}: ${detail}`);
  }
}
clearTimeout(timeout);
console.log(JSON.stringify(counts));
process.exit(counts.warn + counts.error === 0 ? 0 : 1);
