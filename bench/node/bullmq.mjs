// BullMQ's side of bench/queue: a no-op Worker (concurrency 50 unless
// told otherwise) on the same Redis as Mage's queue. This process is the
// worker; the producer is this script again in a child process, started
// under `taskset -c $QUEUE_BENCH_PRODUCER_CPUS` when that is set. Prints
// one JSON line.
//
//   node bullmq.mjs latency [JOBS=400] [RATE_PER_S=20] [CONCURRENCY=50]
//   node bullmq.mjs drain   [JOBS=20000] [CONCURRENCY=50]
//
// latency: jobs added one by one (queue.add) at a steady rate into an idle
//   queue; each carries its enqueue time (process.hrtime, CLOCK_MONOTONIC,
//   shared by every process of the machine) and the processor subtracts it
//   from its own start time.
// drain: JOBS added in bulk (addBulk, chunks of 1,000), then the Worker is
//   built; the time is from building it until its 'completed' event (fired
//   once the job is moved to completed in Redis) has fired JOBS times.
//
// REDIS_URL, default redis://127.0.0.1:6379. Every key lives under a prefix
// of its own, deleted at the end.
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { Queue, Worker } from 'bullmq';
import IORedis from 'ioredis';

const REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
const QUEUE = 'render';
const CHUNK = 1000;
const argv = process.argv.slice(2);
const num = (i, d) => (argv[i] !== undefined && argv[i] !== '' ? Number(argv[i]) : d);
const nowNs = () => process.hrtime.bigint();

function connect() {
  // maxRetriesPerRequest: null is what BullMQ asks of a Worker's connection.
  return new IORedis(REDIS_URL, { maxRetriesPerRequest: null });
}

function pct(sorted, p) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.round((sorted.length - 1) * p)] / 1e6;
}
const round3 = (x) => Math.round(x * 1000) / 1000;

// This script again as `role`, pinned to $QUEUE_BENCH_PRODUCER_CPUS; resolves
// to the JSON line it printed, if any.
function runProducer(role, args) {
  const script = fileURLToPath(import.meta.url);
  const cpus = process.env.QUEUE_BENCH_PRODUCER_CPUS;
  const [cmd, cmdArgs] = cpus
    ? ['taskset', ['-c', cpus, process.execPath, script, role, ...args]]
    : [process.execPath, [script, role, ...args]];
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, cmdArgs, { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      if (code !== 0) return reject(new Error(`producer ${role} failed: ${code ?? signal}`));
      const last = out.trim().split('\n').pop();
      try {
        resolve(last ? JSON.parse(last) : {});
      } catch {
        resolve({});
      }
    });
  });
}

async function deletePrefix(conn, prefix) {
  let cursor = '0';
  let deleted = 0;
  do {
    const [next, keys] = await conn.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
    if (keys.length) deleted += await conn.unlink(...keys);
    cursor = next;
  } while (cursor !== '0');
  return deleted;
}

async function pings(conn, n) {
  const v = [];
  for (let i = 0; i < n; i++) {
    const t = nowNs();
    await conn.ping();
    v.push(Number(nowNs() - t));
  }
  return v.sort((a, b) => a - b);
}

async function waitFor(cond, timeoutMs, everyMs) {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) return false;
    await sleep(everyMs);
  }
  return true;
}

async function latency() {
  const jobs = num(1, 400);
  const rate = num(2, 20);
  const concurrency = num(3, 50);
  const prefix = `bullmq-bench-${randomUUID().replaceAll('-', '')}`;
  const conn = connect();
  const ping = await pings(conn, 200);
  const lat = [];
  const worker = new Worker(
    QUEUE,
    async (job) => {
      lat.push(Number(nowNs() - BigInt(job.data.t)));
    },
    { connection: conn, prefix, concurrency },
  );
  worker.on('error', (e) => console.error('bullmq worker error:', e));
  await worker.waitUntilReady();
  // Running, found nothing, blocked on the marker: an idle queue (as long
  // as Mage's side idles: QUEUE_BENCH_IDLE_MS, default 6 s).
  const idleMs = Number(process.env.QUEUE_BENCH_IDLE_MS || 6000);
  await sleep(idleMs);
  let error;
  let produced = {};
  try {
    produced = await runProducer('produce-latency', [prefix, String(jobs), String(rate)]);
    if (!(await waitFor(() => lat.length >= jobs, 10000, 5))) {
      error = new Error(`only ${lat.length} of ${jobs} jobs started`);
    }
  } catch (e) {
    error = e;
  }
  await worker.close();
  await deletePrefix(conn, prefix);
  await conn.quit();
  if (error) throw error;
  lat.sort((a, b) => a - b);
  const mean = lat.reduce((a, b) => a + b, 0) / lat.length / 1e6;
  console.log(
    JSON.stringify({
      impl: 'bullmq',
      mode: 'latency',
      jobs,
      started: lat.length,
      rate_per_s: rate,
      concurrency,
      idle_before_ms: idleMs,
      p50_ms: round3(pct(lat, 0.5)),
      p90_ms: round3(pct(lat, 0.9)),
      p99_ms: round3(pct(lat, 0.99)),
      max_ms: round3(pct(lat, 1)),
      mean_ms: round3(mean),
      redis_ping_p50_ms: round3(pct(ping, 0.5)),
      redis_ping_p99_ms: round3(pct(ping, 0.99)),
      enqueue_call_p50_ms: produced.enqueue_call_p50_ms,
      enqueue_call_p99_ms: produced.enqueue_call_p99_ms,
      pid: process.pid,
    }),
  );
}

async function drain() {
  const jobs = num(1, 20000);
  const concurrency = num(2, 50);
  const prefix = `bullmq-bench-${randomUUID().replaceAll('-', '')}`;
  const conn = connect();
  let t = nowNs();
  try {
    await runProducer('produce-bulk', [prefix, String(jobs)]);
  } catch (e) {
    await deletePrefix(conn, prefix);
    throw e;
  }
  const enqueueS = Number(nowNs() - t) / 1e9;
  const queue = new Queue(QUEUE, { connection: conn, prefix });
  const waiting = await queue.getWaitingCount();
  if (waiting !== jobs) {
    await deletePrefix(conn, prefix);
    throw new Error(`${waiting} jobs waiting, expected ${jobs}`);
  }
  let started = 0;
  let completed = 0;
  let allStarted = 0n;
  let finished;
  const done = new Promise((resolve) => (finished = resolve));
  const t0 = nowNs();
  const worker = new Worker(
    QUEUE,
    async () => {
      if (++started === jobs) allStarted = nowNs();
    },
    { connection: conn, prefix, concurrency },
  );
  worker.on('error', (e) => console.error('bullmq worker error:', e));
  worker.on('completed', () => {
    if (++completed === jobs) finished(nowNs());
  });
  const t1 = await Promise.race([done, sleep(60000).then(() => null)]);
  await worker.close();
  const doneCount = await queue.getCompletedCount();
  await queue.close();
  await deletePrefix(conn, prefix);
  await conn.quit();
  if (t1 === null) throw new Error(`only ${completed} of ${jobs} jobs completed`);
  const seconds = Number(t1 - t0) / 1e9;
  console.log(
    JSON.stringify({
      impl: 'bullmq',
      mode: 'drain',
      jobs,
      done: doneCount,
      concurrency,
      seconds: round3(seconds),
      jobs_per_s: Math.round(jobs / seconds),
      all_started_s: round3(Number(allStarted - t0) / 1e9),
      enqueue_s: round3(enqueueS),
      pid: process.pid,
    }),
  );
}

async function produceLatency() {
  const [prefix] = argv.slice(1);
  const jobs = num(2, 400);
  const rate = num(3, 20);
  const conn = connect();
  const queue = new Queue(QUEUE, { connection: conn, prefix });
  await queue.waitUntilReady();
  const every = 1000 / rate;
  const start = performance.now();
  const calls = [];
  for (let i = 0; i < jobs; i++) {
    const wait = start + i * every - performance.now();
    if (wait > 0) await sleep(wait);
    const sent = nowNs();
    await queue.add('noop', { t: sent.toString() });
    calls.push(Number(nowNs() - sent));
  }
  await queue.close();
  await conn.quit();
  calls.sort((a, b) => a - b);
  console.log(
    JSON.stringify({
      enqueue_call_p50_ms: round3(pct(calls, 0.5)),
      enqueue_call_p99_ms: round3(pct(calls, 0.99)),
    }),
  );
}

async function produceBulk() {
  const [prefix] = argv.slice(1);
  const jobs = num(2, 20000);
  const conn = connect();
  const queue = new Queue(QUEUE, { connection: conn, prefix });
  for (let left = jobs; left > 0; left -= CHUNK) {
    const n = Math.min(left, CHUNK);
    await queue.addBulk(Array.from({ length: n }, (_, i) => ({ name: 'noop', data: { i } })));
  }
  await queue.close();
  await conn.quit();
}

const modes = {
  latency,
  drain,
  'produce-latency': produceLatency,
  'produce-bulk': produceBulk,
};
const mode = modes[argv[0]];
if (!mode) {
  console.error('usage: node bullmq.mjs latency [JOBS] [RATE] [CONCURRENCY] | drain [JOBS] [CONCURRENCY]');
  process.exit(2);
}
try {
  await mode();
  process.exit(0);
} catch (e) {
  console.error(e?.stack || String(e));
  process.exit(1);
}
