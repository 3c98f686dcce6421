// Turns the JSON lines of bench/queue's runs (one file per run in DIR:
// mage-latency.json, bullmq-latency.json, mage-drain-N.json,
// bullmq-drain-N.json) into bench/queue.json's
// object (printed on stdout) and a table (on stderr).
//   node queue_report.mjs DIR
// Environment: QUEUE_BENCH_CORES (how cores were split), QUEUE_BENCH_REDIS
// (Redis version and URL).
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

const dir = process.argv[2];
const read = (name) => {
  const lines = readFileSync(join(dir, name), 'utf8').trim().split('\n');
  return JSON.parse(lines[lines.length - 1]);
};
const runs = (prefix) =>
  readdirSync(dir)
    .filter((f) => f.startsWith(`${prefix}-`) && f.endsWith('.json'))
    .sort()
    .map(read);
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

const mageLat = read('mage-latency.json');
const bullLat = read('bullmq-latency.json');
const mageDrain = runs('mage-drain');
const bullDrain = runs('bullmq-drain');
const perS = (rs) => rs.map((r) => r.jobs_per_s);
const bullmqVersion = JSON.parse(
  readFileSync(new URL('./node_modules/bullmq/package.json', import.meta.url), 'utf8'),
).version;

const mageJobs = Math.round(median(perS(mageDrain)));
const bullJobs = Math.round(median(perS(bullDrain)));
const result = {
  queue: {
    latency_p50_ms: { mage: mageLat.p50_ms, bullmq: bullLat.p50_ms },
    latency_p99_ms: { mage: mageLat.p99_ms, bullmq: bullLat.p99_ms },
    jobs_per_s: { mage: mageJobs, bullmq: bullJobs },
    latency_p90_ms: { mage: mageLat.p90_ms, bullmq: bullLat.p90_ms },
    latency_max_ms: { mage: mageLat.max_ms, bullmq: bullLat.max_ms },
    latency_mean_ms: { mage: mageLat.mean_ms, bullmq: bullLat.mean_ms },
    redis_ping_p50_ms: { mage: mageLat.redis_ping_p50_ms, bullmq: bullLat.redis_ping_p50_ms },
    // One PING alone, paced like the pushes (half-way between two), from
    // Mage's producer: the floor of enqueue-to-start.
    redis_ping_paced_p50_ms: { mage: mageLat.redis_ping_paced_p50_ms ?? null },
    // How long the producer's enqueue call took (Mage: Queues::push_render,
    // one script, push_now; BullMQ: queue.add, one script).
    enqueue_call_p50_ms: { mage: mageLat.enqueue_call_p50_ms, bullmq: bullLat.enqueue_call_p50_ms },
    drain_runs_jobs_per_s: {
      mage: perS(mageDrain),
      bullmq: perS(bullDrain),
    },
    targets: { latency_p50_at_most_round_trips: 5, jobs_per_s_at_least_times_bullmq: 2 },
    met: {
      latency_p50: mageLat.p50_ms <= 5 * (mageLat.redis_ping_paced_p50_ms ?? mageLat.redis_ping_p50_ms),
      jobs_per_s: mageJobs >= 2 * bullJobs,
    },
    setup: {
      latency_jobs: mageLat.jobs,
      latency_rate_per_s: mageLat.rate_per_s,
      latency_started: { mage: mageLat.started, bullmq: bullLat.started },
      drain_jobs: mageDrain[0]?.jobs,
      drain_rounds: mageDrain.length,
      drain_figure: 'median of the rounds',
      concurrency: { mage: mageLat.concurrency, bullmq: bullLat.concurrency },
      mage_config: mageLat.config,
      mage_drain_prepromoted: mageDrain[0]?.prepromoted,
      bullmq_version: bullmqVersion,
      node_version: process.version,
      redis: process.env.QUEUE_BENCH_REDIS || null,
      cores: process.env.QUEUE_BENCH_CORES || null,
    },
  },
};
console.log(JSON.stringify(result));

const q = result.queue;
const fmt = (x, d = 2) => (x === null || x === undefined ? '-' : typeof x === 'number' ? x.toFixed(d) : String(x));
const rows = [
  ['latency p50 (ms)', fmt(q.latency_p50_ms.mage), fmt(q.latency_p50_ms.bullmq), '<= 5 RTT', q.met.latency_p50 ? 'met' : 'MISSED'],
  ['latency p99 (ms)', fmt(q.latency_p99_ms.mage), fmt(q.latency_p99_ms.bullmq), '', ''],
  ['drain (jobs/s)', fmt(q.jobs_per_s.mage, 0), fmt(q.jobs_per_s.bullmq, 0), '>= 2x BullMQ', q.met.jobs_per_s ? 'met' : 'MISSED'],
];
const head = ['queue', 'Mage', 'BullMQ', 'target', ''];
const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
const line = (r) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
process.stderr.write(
  [
    line(head),
    ...rows.map(line),
    `(${q.setup.latency_jobs} jobs at ${q.setup.latency_rate_per_s}/s into an idle queue; ` +
      `drain of ${q.setup.drain_jobs} bulk-enqueued jobs, median of ${q.setup.drain_rounds}; ` +
      `concurrency ${q.setup.concurrency.mage} / ${q.setup.concurrency.bullmq}; BullMQ ${bullmqVersion}; ` +
      `Redis PING p50 ${fmt(q.redis_ping_p50_ms.mage, 3)} ms in a loop, ${fmt(q.redis_ping_paced_p50_ms.mage, 3)} ms alone)`,
    `cores: ${q.setup.cores}`,
    '',
  ].join('\n'),
);
