// The driver of bench/web: the web app's first load in headless Chromium on
// a release `mage serve`, against one static file from the same server (the
// floor: what any page costs here before its own work starts).
//
// Each load runs in a browser context of its own with the cache disabled,
// so it pays for a new connection and every byte, as a first visit does.
// Time to interactive is the app's own `mage:interactive` mark (set once
// the first page rendered, as tests/it/web.rs reads it); the floor's time is
// its navigation's loadEventEnd. Both count from the navigation's start.
// Bytes and requests are counted once the network has gone quiet: the page
// fetches the model catalogue just after it is interactive and the browser
// its favicon, and reading at "ready" (as the browser test does) counts
// them on some loads and not on others.
//
// Usage: node bench/node/first_load.mjs [loads=5], from the checkout, with
// DATABASE_URL (migrated), REDIS_URL and MAGE_REDIS_PREFIX set. Writes
// bench/web.json.

import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import WebSocket from 'ws';

const MAGE = 'target/release/mage';
const CHROMIUM = '/usr/bin/chromium';
const JWT_SECRET = 'bench-secret-bench-secret-bench-secret-0';
// The browser test's desktop window: the page lays out as it does there.
const VIEWPORT = { width: 1280, height: 900 };
const APP_ROUTE = '/signup';
const FLOOR_PATH = '/web/icon.svg';

const loads = Math.max(1, Number.parseInt(process.argv[2] ?? '5', 10) || 5);
for (const name of ['DATABASE_URL', 'REDIS_URL', 'MAGE_REDIS_PREFIX']) {
  if (!process.env[name]) throw new Error(`${name} is not set (run bench/web)`);
}

// --- Children: killed however this process ends ------------------------

const children = [];
const cleanups = [];
process.on('exit', () => {
  for (const child of children) {
    // Each runs in a group of its own: Chromium's renderers and zygote go
    // with it, and nothing is left holding the port or the profile.
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
  }
  for (const cleanup of cleanups) cleanup();
});
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => process.exit(signal === 'SIGINT' ? 130 : 143));
}

// Two cores or more and taskset: the server on core 0, the browser (and
// this driver, which only waits on it) on core 1, as the other benchmarks
// split server and load generator. PostgreSQL and Redis stay unpinned.
const cores = availableParallelism(); // before pinning: then it would say 1
const pinned =
  cores >= 2 &&
  spawnSync('taskset', ['--version'], { stdio: 'ignore' }).status === 0 &&
  spawnSync('taskset', ['-c', '-p', '1', String(process.pid)], { stdio: 'ignore' }).status === 0;

// Rejects when a child dies before the end: the run fails at once, with
// what the child said last, rather than at the next timeout.
let childDied;
const died = new Promise((_, reject) => {
  childDied = reject;
});
died.catch(() => {});

/** Starts `program` (on `core` when pinned); `onLine` sees its stderr. */
function start(name, core, program, args, env, onLine = () => {}) {
  const [cmd, argv] = pinned ? ['taskset', ['-c', core, program, ...args]] : [program, args];
  const child = spawn(cmd, argv, { env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  // Both streams are read to the end: a full pipe would stall the child.
  const tail = [];
  for (const stream of [child.stdout, child.stderr]) {
    createInterface({ input: stream }).on('line', (line) => {
      tail.push(line);
      if (tail.length > 20) tail.shift();
      if (stream === child.stderr) onLine(line);
    });
  }
  child.on('error', (e) => childDied(new Error(`could not start ${name}: ${e.message}`)));
  child.on('exit', (code, signal) => {
    // A moment for its last lines to arrive.
    setTimeout(() => childDied(new Error(`${name} exited (${signal ?? code}):\n  ${tail.join('\n  ')}`)), 100);
  });
  return child;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer().unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function withTimeout(promise, ms, what) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer in ${ms / 1000} s`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

async function startMage() {
  const addr = `127.0.0.1:${await freePort()}`;
  const base = `http://${addr}`;
  start('mage serve', '0', MAGE, ['serve'], {
    ...process.env,
    MAGE_ADDR: addr,
    MAGE_PUBLIC_URL: base,
    MAGE_JWT_SECRET: JWT_SECRET,
    MAGE_SKIP_MIGRATIONS: 'true',
    MAGE_LOG: 'warn',
  });
  const up = (async () => {
    for (;;) {
      try {
        if ((await fetch(`${base}/healthz`)).status === 200) return;
      } catch {
        // Not listening yet.
      }
      await sleep(50);
    }
  })();
  await withTimeout(Promise.race([up, died]), 30_000, 'mage serve /healthz');
  return base;
}

async function startChromium() {
  const profile = mkdtempSync(join(tmpdir(), 'mage-bench-web-'));
  cleanups.push(() => rmSync(profile, { recursive: true, force: true, maxRetries: 3 }));
  let found;
  const listening = new Promise((resolve) => {
    found = resolve;
  });
  start(
    'chromium',
    '1',
    CHROMIUM,
    [
      '--headless=new',
      '--no-sandbox',
      '--disable-gpu',
      '--remote-debugging-port=0',
      `--user-data-dir=${profile}`,
      'about:blank',
    ],
    process.env,
    (line) => {
      const url = line.match(/^DevTools listening on (ws:\/\/\S+)/);
      if (url) found(url[1]);
    },
  );
  return withTimeout(Promise.race([listening, died]), 30_000, 'chromium DevTools');
}

// --- The DevTools protocol: requests, answers and events ----------------

class Cdp {
  constructor(ws) {
    this.ws = ws;
    this.next = 0;
    this.pending = new Map();
    this.listeners = new Set();
    ws.on('message', (data) => {
      const msg = JSON.parse(data);
      const waiting = msg.id !== undefined && this.pending.get(msg.id);
      if (waiting) {
        this.pending.delete(msg.id);
        if (msg.error) waiting.reject(new Error(`${waiting.method}: ${msg.error.message}`));
        else waiting.resolve(msg.result);
      } else if (msg.method) {
        for (const listener of this.listeners) listener(msg);
      }
    });
    ws.on('close', () => {
      for (const { reject, method } of this.pending.values()) {
        reject(new Error(`${method}: the DevTools socket closed`));
      }
      this.pending.clear();
    });
  }

  static async connect(url) {
    const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 256 * 1024 * 1024 });
    await new Promise((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
    });
    return new Cdp(ws);
  }

  send(method, params = {}, sessionId = undefined) {
    const id = ++this.next;
    const answer = new Promise((resolve, reject) => this.pending.set(id, { resolve, reject, method }));
    this.ws.send(JSON.stringify({ id, method, params, sessionId }));
    return withTimeout(answer, 30_000, method);
  }

  /** Calls `listener(params)` on every `method` event of `sessionId`; returns the unsubscribe. */
  on(method, sessionId, listener) {
    const filter = (msg) => msg.method === method && msg.sessionId === sessionId && listener(msg.params);
    this.listeners.add(filter);
    return () => this.listeners.delete(filter);
  }

  close() {
    this.ws.close();
  }
}

// --- One first load ------------------------------------------------------

// Evaluated in the page once it is loaded: the weight of what it fetched.
const FIGURES = `(() => {
  const entries = performance.getEntriesByType('resource');
  const all = entries.concat(performance.getEntriesByType('navigation'));
  const sum = (key) => all.reduce((n, e) => n + e[key], 0);
  return {
    interactive: performance.getEntriesByName('mage:interactive')[0]?.startTime ?? null,
    loadEventEnd: performance.getEntriesByType('navigation')[0]?.loadEventEnd ?? null,
    transferred: sum('transferSize'),
    decoded: sum('decodedBodySize'),
    requests: entries.length + 1,
  };
})()`;

// A load is over once no request has been in flight for this long (as
// Puppeteer's networkidle0): the page's last fetches end after it is
// interactive, and so does the browser's favicon request.
const QUIET_MS = 500;

/**
 * Opens `url` in a fresh browser context with the cache disabled, polls
 * `ready` (a JS expression) every 10 ms until it is true, waits for the
 * network to go quiet, then returns FIGURES; the context is disposed of in
 * every case.
 */
async function firstLoad(cdp, url, ready) {
  const { browserContextId } = await cdp.send('Target.createBrowserContext', { disposeOnDetach: true });
  try {
    const { targetId } = await cdp.send('Target.createTarget', {
      url: 'about:blank',
      browserContextId,
      ...VIEWPORT,
    });
    const { sessionId } = await cdp.send('Target.attachToTarget', { targetId, flatten: true });
    const call = (method, params) => cdp.send(method, params, sessionId);
    let crashed = false;
    const inFlight = new Map();
    let lastActivity = Date.now();
    const done = ({ requestId }) => {
      inFlight.delete(requestId);
      lastActivity = Date.now();
    };
    const unsubscribe = [
      cdp.on('Inspector.targetCrashed', sessionId, () => {
        crashed = true;
      }),
      cdp.on('Network.requestWillBeSent', sessionId, ({ requestId, request }) => {
        inFlight.set(requestId, request.url);
        lastActivity = Date.now();
      }),
      cdp.on('Network.loadingFinished', sessionId, done),
      cdp.on('Network.loadingFailed', sessionId, done),
    ];
    try {
      // Inspector: for its targetCrashed event.
      await call('Inspector.enable');
      await call('Network.enable');
      await call('Network.setCacheDisabled', { cacheDisabled: true });
      await call('Page.enable');
      const nav = await call('Page.navigate', { url });
      if (nav.errorText) throw new Error(`${url}: ${nav.errorText}`);
      const evaluate = async (expression) => {
        const r = await call('Runtime.evaluate', { expression, returnByValue: true });
        if (r.exceptionDetails) throw new Error(`${expression} threw: ${r.exceptionDetails.text}`);
        return r.result.value;
      };
      const poll = `(() => { try { return !!(${ready}); } catch { return false; } })()`;
      const deadline = Date.now() + 30_000;
      for (;;) {
        // While the document changes under it an evaluation can fail: the
        // next one reaches the new document.
        if (await evaluate(poll).catch(() => false)) break;
        if (crashed) throw new Error(`${url}: the page crashed`);
        if (Date.now() > deadline) {
          const text = await evaluate("document.body?.innerText.slice(0, 500) ?? ''").catch((e) => e.message);
          throw new Error(`${url}: not ready in 30 s (${ready}); the page says:\n${text}`);
        }
        await sleep(10);
      }
      const quietBy = Date.now() + 10_000;
      while (inFlight.size > 0 || Date.now() - lastActivity < QUIET_MS) {
        if (Date.now() > quietBy) {
          throw new Error(`${url}: still loading 10 s after ready: ${[...inFlight.values()].join(', ')}`);
        }
        await sleep(50);
      }
      return await evaluate(FIGURES);
    } finally {
      for (const off of unsubscribe) off();
    }
  } finally {
    await cdp.send('Target.disposeBrowserContext', { browserContextId });
  }
}

async function loadApp(cdp, base) {
  const f = await firstLoad(cdp, base + APP_ROUTE, `document.body.dataset.ready === '${APP_ROUTE}'`);
  if (!(f.interactive > 0)) {
    throw new Error(`${APP_ROUTE} was ready but has no mage:interactive mark: ${JSON.stringify(f)}`);
  }
  return {
    interactive_ms: round(f.interactive),
    transferred_bytes: f.transferred,
    decoded_bytes: f.decoded,
    requests: f.requests,
  };
}

async function loadFloor(cdp, base) {
  const url = base + FLOOR_PATH;
  // readyState turns 'complete' before the load event runs, and with it
  // loadEventEnd: wait for both. The URL check keeps about:blank, complete
  // from the start, from passing for it.
  const f = await firstLoad(
    cdp,
    url,
    `location.href === ${JSON.stringify(url)} && document.readyState === 'complete' && ` +
      `performance.getEntriesByType('navigation')[0].loadEventEnd > 0`,
  );
  return {
    interactive_ms: round(f.loadEventEnd),
    transferred_bytes: f.transferred,
    decoded_bytes: f.decoded,
    requests: f.requests,
  };
}

// --- The benchmark --------------------------------------------------------

const round = (x) => Math.round(x * 10) / 10;

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : round((s[mid - 1] + s[mid]) / 2);
}

const loadAverage = () => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');

async function main() {
  const loadBefore = loadAverage();
  const base = await startMage();
  const cdp = await Cdp.connect(await startChromium());
  const { product } = await cdp.send('Browser.getVersion');

  // Untimed: the first of each pays for the browser's and the server's
  // cold paths (process start-up, the files' first read), not the page's.
  await loadApp(cdp, base);
  await loadFloor(cdp, base);
  const runs = { app: [], static_page: [] };
  for (let i = 0; i < loads; i++) {
    runs.app.push(await loadApp(cdp, base));
    runs.static_page.push(await loadFloor(cdp, base));
  }
  cdp.close();
  const loadAfter = loadAverage();

  const of = (kind, key) => median(runs[kind].map((r) => r[key]));
  const report = {
    web: {
      interactive_ms: { app: of('app', 'interactive_ms'), static_page: of('static_page', 'interactive_ms') },
      transferred_bytes: { app: of('app', 'transferred_bytes') },
      decoded_bytes: { app: of('app', 'decoded_bytes') },
      requests: { app: of('app', 'requests') },
      loads,
      runs,
      chromium: product,
      pinned,
    },
  };
  writeFileSync('bench/web.json', `${JSON.stringify(report, null, 2)}\n`);

  const split = pinned
    ? 'mage serve pinned to core 0, Chromium to core 1 (taskset); PostgreSQL and Redis unpinned'
    : `not pinned: mage serve, Chromium, PostgreSQL and Redis share ${cores} core(s)`;
  const cells = (...xs) => xs.map((x, i) => String(x)[i ? 'padStart' : 'padEnd'](i ? 13 : 30)).join(' ');
  const row = (label, kind) => {
    const ms = runs[kind].map((r) => r.interactive_ms);
    const range = `${Math.min(...ms).toFixed(1)}–${Math.max(...ms).toFixed(1)}`;
    const bytes = ['transferred_bytes', 'decoded_bytes', 'requests'].map((key) => of(kind, key));
    return cells(label, of(kind, 'interactive_ms').toFixed(1), range, ...bytes);
  };
  console.log(`web: first load in ${product}, fresh context, cache disabled, ${loads} loads each, medians`);
  console.log(`  cores  ${cores}: ${split}`);
  console.log(`  load   ${loadBefore} before, ${loadAfter} after (1, 5, 15 min)`);
  console.log(`  ${cells('', 'ms', 'range ms', 'bytes', 'decoded', 'requests')}`);
  console.log(`  ${row(`app ${APP_ROUTE}, to interactive`, 'app')}`);
  console.log(`  ${row(`static ${FLOOR_PATH}, to load`, 'static_page')}`);
  console.log(`  ratio  app / static ${(report.web.interactive_ms.app / report.web.interactive_ms.static_page).toFixed(2)}`);
}

try {
  await Promise.race([main(), died]);
  process.exit(0);
} catch (e) {
  console.error(`web: ${e.message}`);
  process.exit(1);
}
