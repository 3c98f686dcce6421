// Runs the graphql-http package's GraphQL-over-HTTP server audits (listed in
// AUDITS.md) against a running server: `node audit.mjs http://127.0.0.1:8080/graphql`.
// Prints one line per audit that is not ok (`STATUS id name: reason (response)`),
// then `{"ok":N,"warn":N,"error":N,"notice":N}`; exits 1 on any warning or error.
// MUST audits fail as `error`, SHOULD as `warn`, MAY as `notice` (not a failure).
import { serverAudits } from 'graphql-http';

const url = process.argv[2];
if (!url) {
  console.error('usage: node audit.mjs <url of the GraphQL endpoint>');
  process.exit(2);
}
// Nothing may hang the test that runs this: each request (body included) has
// 10 s, the whole run 60 s.
setTimeout(() => {
  console.log('ERROR audits did not finish within 60 s');
  process.exit(1);
}, 60_000).unref();
const fetchFn = (input, init) => fetch(input, { ...init, signal: AbortSignal.timeout(10_000) });

// What auditServer({ url, fetchFn }) does, except that a fatal error (refused
// connection, timeout) fails its own audit instead of the whole run.
const results = await Promise.all(
  serverAudits({ url, fetchFn }).map(({ id, name, fn }) =>
    fn().catch((err) => ({ id, name, status: 'error', reason: `request failed: ${err?.cause?.message ?? err}` })),
  ),
);
const counts = { ok: 0, warn: 0, error: 0, notice: 0 };
for (const r of results) {
  counts[r.status] += 1;
  if (r.status === 'ok') continue;
  let detail = r.reason;
  if (r.response) {
    const body = await r.response.text().catch(() => '<body already read>');
    const type = r.response.headers.get('content-type') ?? 'no content-type';
    detail += ` (got ${r.response.status} ${type}: ${body.slice(0, 200).replace(/\s+/g, ' ')})`;
  }
  console.log(`${r.status.toUpperCase()} ${r.id} ${r.name}: ${detail}`);
}
console.log(JSON.stringify(counts));
process.exit(counts.warn + counts.error === 0 ? 0 : 1);
