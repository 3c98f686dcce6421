// The admin console (role ADMIN): daily figures with charts, the render
// queue and its dead jobs, users and their credits, the catalogue editor
// and stored Stripe events. One tab at a time, chosen by `?tab=`.
import { gql, explain } from '../api.js';
import { h, fill, toast, field, busy, credits, money, when, duration, statusBadge, resolution, bytes, idempotencyKey } from '../ui.js';

const TABS = [
  ['stats', 'Stats'],
  ['queue', 'Queue'],
  ['users', 'Users'],
  ['catalog', 'Catalog'],
  ['stripe', 'Stripe'],
];

export default async function admin(main, ctx) {
  if (ctx.me?.role !== 'ADMIN') {
    fill(
      main,
      h('h1', {}, 'Admins only'),
      h('p', {}, 'This console is for Mage administrators. ', h('a', { href: '/create', 'data-link': true }, 'Go back to creating'), '.'),
    );
    return undefined;
  }
  const asked = ctx.query.get('tab');
  const tab = TABS.some(([k]) => k === asked) ? asked : 'stats';
  const label = TABS.find(([k]) => k === tab)[1];
  const panel = h('section', { id: 'admin-panel', class: 'admin-panel', 'data-tab': tab, 'aria-label': label });
  fill(
    main,
    h('h1', {}, 'Admin'),
    h(
      'nav',
      { 'aria-label': 'Admin', class: 'admin-tabs' },
      h('ul', {}, TABS.map(([key, text]) =>
        h('li', {}, h('a', { href: `/admin?tab=${key}`, id: `admin-tab-${key}`, 'data-link': true, 'data-tab': key, 'aria-current': key === tab ? 'page' : null }, text)),
      )),
    ),
    panel,
  );
  const cleanups = [];
  const page = { main, panel, ctx, onCleanup: (fn) => cleanups.push(fn) };
  panel.setAttribute('aria-busy', 'true');
  try {
    await { stats, queue, users, catalog, stripe }[tab](page);
  } finally {
    panel.removeAttribute('aria-busy');
    panel.dataset.loaded = 'true';
  }
  return () => {
    for (const fn of cleanups.splice(0)) {
      try {
        fn();
      } catch {
        /* leaving anyway */
      }
    }
  };
}

// ---------------------------------------------------------------- helpers

const pad = (n) => String(n).padStart(2, '0');
/** `YYYY-MM-DD` of a Date in the browser's time zone. */
const localDay = (d) => `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
/** Unix seconds of a day's local midnight (uPlot's x). */
function dayEpoch(day) {
  const [y, m, d] = day.split('-').map(Number);
  return new Date(y, m - 1, d).getTime() / 1000;
}
const isDay = (s) => /^\d{4}-\d{2}-\d{2}$/.test(s || '');

const num = (n) => (n == null ? '—' : Number(n).toLocaleString('en'));

function secs(s) {
  if (s == null) return '—';
  if (s < 10) return `${Number(s).toFixed(1)} s`;
  if (s >= 3600) return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  return duration(s);
}

/** `money()` that survives a currency code Intl does not know. */


/** An integer from a number input, or null when empty. */
function intOrNull(input) {
  const v = input.value.trim();
  if (v === '') return null;
  const n = Number(v);
  if (!Number.isInteger(n)) throw new Error(`${labelOf(input)} must be a whole number.`);
  return n;
}

function labelOf(input) {
  return (input.labels?.[0]?.textContent || input.getAttribute('aria-label') || input.name || 'This field').trim();
}

/** A table in a horizontal scroller; `label` makes the scroller a named,
 * focusable region, for tables with nothing else to focus (so keyboards
 * can scroll them). */
function table(id, caption, heads, rows, label) {
  return h(
    'div',
    { class: 'scroll', ...(label ? { role: 'region', 'aria-label': label, tabindex: '0' } : {}) },
    h(
      'table',
      { id },
      caption ? h('caption', {}, caption) : null,
      h('thead', {}, h('tr', {}, heads.map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, rows),
    ),
  );
}

function tile(key, label, value) {
  return h('div', { class: 'stat card', 'data-stat': key }, h('span', { class: 'muted' }, label), h('b', {}, value));
}

function errorBox(e, what) {
  return h('p', { class: 'error', role: 'alert' }, `Could not load ${what}: ${explain(e)}`);
}

function yesNo(v) {
  return v ? 'Yes' : 'No';
}

// ------------------------------------------------------------------ stats

const STATS_QUERY = `query AdminDailyStats($from: Date!, $to: Date!) {
  dailyStats(from: $from, to: $to) {
    day newUsers activeUsers ordersPaid revenue { currency cents }
    creditsPurchased creditsGranted creditsCaptured creditsReleased creditsClawedBack creditsExpired
    generationsCreated generationsSucceeded generationsFailed generationsCanceled
    queueWaitP50Seconds queueWaitP95Seconds renderP50Seconds renderP95Seconds renderSecondsTotal timeZone
  }
}`;

const STAT_COLS = [
  ['day', 'Day', (r) => r.day],
  ['newUsers', 'New users'],
  ['activeUsers', 'Active users'],
  ['ordersPaid', 'Orders paid'],
  ['revenue', 'Revenue', (r) => (r.revenue.length ? r.revenue.map((m) => money(m.cents, m.currency)).join(', ') : '—')],
  ['creditsPurchased', 'Credits purchased'],
  ['creditsGranted', 'Credits granted'],
  ['creditsCaptured', 'Credits captured'],
  ['creditsReleased', 'Credits released'],
  ['creditsClawedBack', 'Credits clawed back'],
  ['creditsExpired', 'Credits expired'],
  ['generationsCreated', 'Generations created'],
  ['generationsSucceeded', 'Succeeded'],
  ['generationsFailed', 'Failed'],
  ['generationsCanceled', 'Canceled'],
  ['queueWaitP50Seconds', 'Queue wait p50', (r) => secs(r.queueWaitP50Seconds)],
  ['queueWaitP95Seconds', 'Queue wait p95', (r) => secs(r.queueWaitP95Seconds)],
  ['renderP50Seconds', 'Render p50', (r) => secs(r.renderP50Seconds)],
  ['renderP95Seconds', 'Render p95', (r) => secs(r.renderP95Seconds)],
  ['renderSecondsTotal', 'Render time', (r) => secs(r.renderSecondsTotal)],
];

// Mid-tone colours readable on the light and the dark background.
const COLORS = { violet: '#7c6cf0', green: '#1f9d55', red: '#e0484d', amber: '#d08a00', blue: '#1c8ad6', grey: '#8a8aa0' };
const CHART_HEIGHT = 240;
/** x ticks fall on whole days only. */
const DAY_INCRS = [1, 2, 7, 14, 28, 56, 91, 182, 364].map((d) => d * 86400);

let uPlotLoading = null;
function loadUPlot() {
  if (!document.querySelector('link[href="/web/vendor/uPlot.min.css"]')) {
    document.head.append(h('link', { rel: 'stylesheet', href: '/web/vendor/uPlot.min.css' }));
  }
  uPlotLoading ??= import('/web/vendor/uPlot.esm.js').then((m) => m.default);
  return uPlotLoading;
}

const sum = (rows, f) => rows.reduce((a, r) => a + (Number(f(r)) || 0), 0);

async function stats({ panel, ctx, onCleanup }) {
  const today = new Date();
  const defTo = localDay(today);
  const defFrom = localDay(new Date(today.getFullYear(), today.getMonth(), today.getDate() - 13));
  const fromInput = h('input', { type: 'date', id: 'stats-from', name: 'from', required: true, value: isDay(ctx.query.get('from')) ? ctx.query.get('from') : defFrom });
  const toInput = h('input', { type: 'date', id: 'stats-to', name: 'to', required: true, value: isDay(ctx.query.get('to')) ? ctx.query.get('to') : defTo });
  const apply = h('button', { type: 'submit', id: 'stats-apply' }, 'Apply');
  const results = h('div', { id: 'stats-results' });
  const form = h(
    'form',
    { id: 'stats-range', class: 'admin-range', 'aria-label': 'Date range' },
    field('From', fromInput),
    field('To', toInput),
    h('div', { class: 'field' }, apply),
  );
  fill(panel, h('h2', {}, 'Daily figures'), form, results);

  let plots = [];
  let raf = 0;
  const destroyPlots = () => {
    plots.forEach(({ u }) => u.destroy());
    plots = [];
  };
  const onResize = () => {
    // Left before the cleanup was handed over: let go by ourselves.
    if (!panel.isConnected) return window.removeEventListener('resize', onResize);
    cancelAnimationFrame(raf);
    raf = requestAnimationFrame(() => {
      for (const { u, el } of plots) {
        const width = el.clientWidth;
        if (width > 0 && width !== u.width) u.setSize({ width, height: CHART_HEIGHT });
      }
    });
  };
  window.addEventListener('resize', onResize);
  onCleanup(() => {
    window.removeEventListener('resize', onResize);
    cancelAnimationFrame(raf);
    destroyPlots();
  });

  async function load() {
    const from = fromInput.value;
    const to = toInput.value;
    if (!isDay(from) || !isDay(to)) {
      toast('Choose both dates.', 'error');
      return;
    }
    if (from > to) {
      toast('"From" must be on or before "To".', 'error');
      return;
    }
    let rows;
    try {
      rows = (await gql(STATS_QUERY, { from, to })).dailyStats;
    } catch (e) {
      destroyPlots();
      fill(results, errorBox(e, 'the figures'));
      return;
    }
    if (!panel.isConnected) return;
    destroyPlots();
    if (!rows.length) {
      fill(results, h('p', { id: 'stats-empty' }, `No days are computed yet between ${from} and ${to}.`));
      return;
    }
    await show(rows, from, to);
  }

  async function show(rows, from, to) {
    const currencies = [...new Set(rows.flatMap((r) => r.revenue.map((m) => m.currency)))].sort();
    const revenueOf = (r, c) => r.revenue.find((m) => m.currency === c)?.cents ?? 0;
    const creditsIn = (r) => r.creditsPurchased + r.creditsGranted;
    const todayRow = rows.find((r) => r.day === localDay(new Date()));
    const zones = [...new Set(rows.map((r) => r.timeZone))].join(', ');

    const tiles = h(
      'div',
      { class: 'stats', id: 'stats-totals' },
      tile('newUsers', 'New users', num(sum(rows, (r) => r.newUsers))),
      tile('ordersPaid', 'Orders paid', num(sum(rows, (r) => r.ordersPaid))),
      tile('revenue', 'Revenue', currencies.length ? currencies.map((c) => money(sum(rows, (r) => revenueOf(r, c)), c)).join(' · ') : '—'),
      tile('creditsPurchased', 'Credits purchased', num(sum(rows, (r) => r.creditsPurchased))),
      tile('creditsGranted', 'Credits granted', num(sum(rows, (r) => r.creditsGranted))),
      tile('creditsCaptured', 'Credits captured', num(sum(rows, (r) => r.creditsCaptured))),
      tile('generationsCreated', 'Generations created', num(sum(rows, (r) => r.generationsCreated))),
      tile('generationsSucceeded', 'Succeeded', num(sum(rows, (r) => r.generationsSucceeded))),
      tile('generationsFailed', 'Failed', num(sum(rows, (r) => r.generationsFailed))),
      tile('renderSecondsTotal', 'Render time', secs(sum(rows, (r) => r.renderSecondsTotal))),
    );

    const charts = [
      {
        id: 'chart-revenue',
        title: 'Revenue per day',
        empty: currencies.length ? null : 'No revenue in this range.',
        series: currencies.map((c, i) => ({
          label: c,
          color: [COLORS.green, COLORS.violet, COLORS.amber, COLORS.blue, COLORS.red][i % 5],
          values: rows.map((r) => revenueOf(r, c) / 100),
          fmt: (v) => money(Math.round(v * 100), c),
        })),
      },
      {
        id: 'chart-credits',
        title: 'Credits in and out',
        series: [
          { label: 'In (purchased + granted)', color: COLORS.green, values: rows.map(creditsIn) },
          { label: 'Captured', color: COLORS.violet, values: rows.map((r) => r.creditsCaptured) },
          { label: 'Expired', color: COLORS.amber, values: rows.map((r) => r.creditsExpired) },
          { label: 'Clawed back', color: COLORS.red, values: rows.map((r) => r.creditsClawedBack) },
        ],
      },
      {
        id: 'chart-generations',
        title: 'Generations by status',
        series: [
          { label: 'Created', color: COLORS.blue, values: rows.map((r) => r.generationsCreated) },
          { label: 'Succeeded', color: COLORS.green, values: rows.map((r) => r.generationsSucceeded) },
          { label: 'Failed', color: COLORS.red, values: rows.map((r) => r.generationsFailed) },
          { label: 'Canceled', color: COLORS.grey, values: rows.map((r) => r.generationsCanceled) },
        ],
      },
      {
        id: 'chart-timing',
        title: 'Queue wait and render time (seconds)',
        timing: true,
        series: [
          { label: 'Queue wait p50', color: COLORS.blue, values: rows.map((r) => r.queueWaitP50Seconds), fmt: secs },
          { label: 'Queue wait p95', color: COLORS.blue, dash: [6, 4], values: rows.map((r) => r.queueWaitP95Seconds), fmt: secs },
          { label: 'Render p50', color: COLORS.violet, values: rows.map((r) => r.renderP50Seconds), fmt: secs },
          { label: 'Render p95', color: COLORS.violet, dash: [6, 4], values: rows.map((r) => r.renderP95Seconds), fmt: secs },
        ],
      },
    ];

    const figures = charts.map((c) => {
      const fmt = (s) => s.fmt || num;
      const summary = c.timing
        ? c.series.map((s) => {
            const vals = s.values.filter((v) => v != null);
            return `${s.label} highest ${vals.length ? fmt(s)(Math.max(...vals)) : 'none'}`;
          })
        : c.series.map((s) => `${s.label} total ${fmt(s)(s.values.reduce((a, v) => a + (v || 0), 0))}`);
      const box = h('div', {
        class: 'chart admin-chart-plot',
        id: c.id,
        role: 'img',
        'aria-label': `${c.title}, ${from} to ${to}${summary.length ? `: ${summary.join('; ')}` : ''}. Every day's figures are in the table below.`,
      });
      const fig = h('figure', { class: 'card admin-chart' }, h('figcaption', {}, c.title), c.empty ? h('p', { class: 'muted', id: c.id }, c.empty) : box);
      return { c, box, fig };
    });

    const tableRows = rows.map((r) =>
      h(
        'tr',
        { 'data-day': r.day, class: r === todayRow ? 'today' : null },
        STAT_COLS.map(([key, , f]) => {
          const raw = key === 'day' || key === 'revenue' ? null : r[key];
          return h('td', { 'data-col': key, 'data-value': raw == null ? null : String(raw) }, f ? f(r) : num(r[key]));
        }),
      ),
    );
    const caption = `One row per computed day, cut in ${zones}.${todayRow ? ` Today's row (${todayRow.day}) counts so far.` : ''}`;

    fill(
      results,
      tiles,
      todayRow ? h('p', { class: 'muted' }, `Totals include today (${todayRow.day}) so far.`) : null,
      h('div', { class: 'admin-charts' }, figures.map((f) => f.fig)),
      h('h2', {}, 'Every day'),
      table('stats-table', caption, STAT_COLS.map(([, t]) => t), tableRows, 'Every day'),
    );

    let uPlot;
    try {
      uPlot = await loadUPlot();
    } catch {
      figures.forEach(({ box, c }) => !c.empty && fill(box, h('p', { class: 'muted' }, 'The chart could not be loaded; the figures are in the table below.')));
      return;
    }
    if (!results.isConnected) return;
    const css = getComputedStyle(document.documentElement);
    const fg = css.getPropertyValue('--muted').trim() || '#55556a';
    const line = css.getPropertyValue('--line').trim() || '#dcdce6';
    const xs = rows.map((r) => dayEpoch(r.day));
    for (const { c, box } of figures) {
      if (c.empty) continue;
      const opts = {
        width: Math.max(box.clientWidth, 200),
        height: CHART_HEIGHT,
        scales: {
          x: { time: true, range: () => [xs[0] - 43200, xs[xs.length - 1] + 43200] },
          y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] },
        },
        axes: [
          { stroke: fg, grid: { stroke: line, width: 1 }, ticks: { stroke: line, width: 1 }, incrs: DAY_INCRS },
          { stroke: fg, grid: { stroke: line, width: 1 }, ticks: { stroke: line, width: 1 }, size: 64, values: (u, vals) => vals.map((v) => (c.timing ? `${+v.toFixed(1)}` : Number(v).toLocaleString('en'))) },
        ],
        series: [
          { label: 'Day', value: (u, v) => (v == null ? '—' : localDay(new Date(v * 1000))) },
          ...c.series.map((s) => ({
            label: s.label,
            stroke: s.color,
            width: 2,
            dash: s.dash,
            spanGaps: false,
            points: { show: true, size: 6, fill: s.color },
            value: (u, v) => (v == null ? '—' : (s.fmt || num)(v)),
          })),
        ],
      };
      const u = new uPlot(opts, [xs, ...c.series.map((s) => s.values)], box);
      plots.push({ u, el: box });
    }
    onResize();
  }

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const q = new URLSearchParams({ tab: 'stats', from: fromInput.value, to: toInput.value });
    history.replaceState(null, '', `/admin?${q}`);
    await busy(apply, load, explain);
  });
  await load();
}

// ------------------------------------------------------------------ queue

const QUEUE_QUERY = `query AdminQueue {
  queue {
    depth running averageWaitSeconds renderSlots
    backends { kind location healthy detail vramFreeBytes vramTotalBytes checkedBy checkedAt }
    jobs { queue waiting running failed dead }
  }
}`;
const DEAD_QUERY = `query AdminDeadJobs { deadJobs(first: 50) { queue taskId generationId attempts error diedAt } }`;
const RETRY = `mutation RetryDeadJob($q: String!, $t: ID!) { retryDeadJob(queue: $q, taskId: $t) { id status } }`;

async function queue({ panel, onCleanup }) {
  const live = h('div', { id: 'queue-live' });
  const updated = h('p', { class: 'muted', id: 'queue-updated' });
  const dead = h('div', { id: 'dead-jobs' });
  const reloadDead = h('button', { type: 'button', class: 'secondary', id: 'dead-reload', onclick: () => busy(reloadDead, loadDead, explain) }, 'Reload dead jobs');
  fill(
    panel,
    h('h2', {}, 'Render queue'),
    h('p', { class: 'muted' }, 'Refreshed every 3 seconds.'),
    live,
    updated,
    h('div', { class: 'row admin-head' }, h('h2', {}, 'Dead jobs'), reloadDead),
    dead,
  );

  let inflight = false;
  let failing = false;
  async function tick() {
    if (!panel.isConnected) return stop();
    if (inflight || document.hidden) return undefined;
    inflight = true;
    try {
      const q = (await gql(QUEUE_QUERY)).queue;
      if (!panel.isConnected) return stop();
      showQueue(q);
      failing = false;
      updated.textContent = `Updated ${new Date().toLocaleTimeString('en')}.`;
      updated.classList.remove('error');
    } catch (e) {
      updated.textContent = `Could not refresh: ${explain(e)}`;
      updated.classList.add('error');
      if (!failing) toast(explain(e), 'error');
      failing = true;
    } finally {
      inflight = false;
    }
    return undefined;
  }

  let shown = '';
  function showQueue(q) {
    const key = JSON.stringify(q);
    if (key === shown) return;
    shown = key;
    fill(
      live,
      h(
        'div',
        { class: 'stats', id: 'queue-tiles' },
        tile('depth', 'Waiting', num(q.depth)),
        tile('running', 'Running', num(q.running)),
        tile('averageWaitSeconds', 'Average wait (last hour)', q.averageWaitSeconds == null ? '—' : secs(q.averageWaitSeconds)),
        tile('renderSlots', 'Render slots', num(q.renderSlots)),
      ),
      h('h3', {}, 'Backends'),
      q.backends.length
        ? table(
            'backends-table',
            null,
            ['Kind', 'Location', 'Health', 'Detail', 'VRAM free', 'Checked by', 'Checked'],
            q.backends.map((b) =>
              h(
                'tr',
                { 'data-location': b.location, 'data-healthy': String(b.healthy) },
                h('td', {}, b.kind),
                h('td', { class: 'admin-code' }, b.location),
                h('td', {}, h('span', { class: `badge ${b.healthy ? 'healthy' : 'unhealthy'}` }, b.healthy ? 'healthy' : 'unhealthy')),
                h('td', { class: 'admin-error' }, b.detail),
                h('td', {}, b.vramTotalBytes ? `${bytes(b.vramFreeBytes ?? 0)} of ${bytes(b.vramTotalBytes)}` : '—'),
                h('td', { class: 'admin-code' }, b.checkedBy),
                h('td', {}, when(b.checkedAt)),
              ),
            ),
            'Backends',
          )
        : h('p', { class: 'muted', id: 'backends-none' }, 'No backend has reported yet: no worker is running.'),
      h('h3', {}, 'Jobs per queue'),
      table(
        'jobs-table',
        null,
        ['Queue', 'Waiting', 'Running', 'Failed (24 h)', 'Dead'],
        q.jobs.map((j) =>
          h(
            'tr',
            { 'data-queue': j.queue },
            h('td', { 'data-col': 'queue' }, j.queue),
            h('td', { 'data-col': 'waiting' }, num(j.waiting)),
            h('td', { 'data-col': 'running' }, num(j.running)),
            h('td', { 'data-col': 'failed' }, num(j.failed)),
            h('td', { 'data-col': 'dead' }, num(j.dead)),
          ),
        ),
        'Jobs per queue',
      ),
    );
  }

  async function loadDead() {
    let jobs;
    jobs = await listInto(dead, () => gql(DEAD_QUERY).then((d) => d.deadJobs), 'the dead jobs', h('p', { class: 'muted', id: 'dead-jobs-none' }, 'No dead jobs.'));
    if (!jobs) return;
    fill(
      dead,
      table(
        'dead-jobs-table',
        null,
        ['Queue', 'Task', 'Generation', 'Attempts', 'Error', 'Died', 'Action'],
        jobs.map((j) => {
          const retry = actionButton('Retry', 'retry', `Retry job ${j.taskId}`, { 'data-task-id': j.taskId }, async () => {
            const g = (await gql(RETRY, { q: j.queue, t: j.taskId })).retryDeadJob;
            toast(`Generation ${g.id} is ${g.status.toLowerCase()} again.`, 'success');
            await loadDead();
            tick();
          });
          return h(
            'tr',
            { 'data-task-id': j.taskId, 'data-queue': j.queue },
            h('td', {}, j.queue),
            h('td', { class: 'admin-code' }, j.taskId),
            h('td', { class: 'admin-code' }, j.generationId || '—'),
            h('td', {}, num(j.attempts)),
            h('td', { class: 'admin-error' }, j.error || '—'),
            h('td', {}, when(j.diedAt)),
            h('td', {}, retry),
          );
        }),
      ),
    );
  }

  const timer = setInterval(tick, 3000);
  function stop() {
    clearInterval(timer);
  }
  onCleanup(stop);
  await Promise.all([tick(), loadDead()]);
}

// ------------------------------------------------------------------ users

const USERS_QUERY = `query AdminUsers($search: String, $after: String) {
  users(search: $search, first: 20, after: $after) {
    pageInfo { hasNextPage endCursor }
    nodes { id email role emailVerified createdAt deleted credits { balance held expiringSoon } }
  }
}`;
const ACCOUNT = 'balance held expiringSoon';
const GRANT = `mutation GrantCredits($userId: ID!, $amount: Int!, $reason: String!, $key: String) {
  grantCredits(userId: $userId, amount: $amount, reason: $reason, idempotencyKey: $key) { ${ACCOUNT} }
}`;
const REVOKE = `mutation RevokeCredits($userId: ID!, $amount: Int!, $reason: String!, $key: String) {
  revokeCredits(userId: $userId, amount: $amount, reason: $reason, idempotencyKey: $key) { ${ACCOUNT} }
}`;

async function users({ panel, ctx }) {
  const search = h('input', { type: 'search', id: 'user-search-input', name: 'search', autocomplete: 'off', value: ctx.query.get('search') || '' });
  const go = h('button', { type: 'submit', id: 'user-search-button' }, 'Search');
  const form = h('form', { id: 'user-search', class: 'admin-search', role: 'search' }, field('Search by email', search), h('div', { class: 'field' }, go));
  const tbody = h('tbody');
  const status = h('p', { class: 'muted', id: 'users-status', role: 'status' });
  const more = h('button', { type: 'button', class: 'secondary', id: 'users-more', hidden: true }, 'More');
  const wrap = h(
    'div',
    { class: 'scroll' },
    h(
      'table',
      { id: 'users-table' },
      h('thead', {}, h('tr', {}, ['Email', 'Role', 'Verified', 'Created', 'Balance', 'Held', 'Expiring soon', 'Adjust credits'].map((t) => h('th', { scope: 'col' }, t)))),
      tbody,
    ),
  );
  fill(panel, h('h2', {}, 'Users'), form, status, wrap, more);

  let after = null;
  let term = search.value.trim();

  function accountCells(tr, a) {
    for (const k of ['balance', 'held', 'expiringSoon']) {
      const td = tr.querySelector(`td[data-col="${k}"]`);
      td.textContent = num(a[k]);
      td.dataset.value = String(a[k]);
    }
  }

  function row(u) {
    const amount = h('input', { type: 'number', name: 'amount', id: `amount-${u.id}`, min: '1', max: '1000000', step: '1', required: true, inputmode: 'numeric' });
    const reason = h('input', { type: 'text', name: 'reason', id: `reason-${u.id}`, maxlength: '500', required: true });
    const grant = h('button', { type: 'submit', name: 'action', value: 'grant', class: 'grant' }, 'Grant');
    const revoke = h('button', { type: 'submit', name: 'action', value: 'revoke', class: 'danger revoke' }, 'Revoke');
    const adjust = h(
      'form',
      { class: 'adjust', 'aria-label': `Adjust credits of ${u.email}` },
      field('Credits', amount),
      field('Reason', reason),
      h('div', { class: 'adjust-buttons' }, grant, revoke),
    );
    const tr = h(
      'tr',
      { 'data-user-id': u.id, 'data-email': u.email },
      h('td', { 'data-col': 'email' }, u.email, u.deleted ? [' ', h('span', { class: 'badge deleted' }, 'deleted')] : null),
      h('td', { 'data-col': 'role' }, u.role.toLowerCase()),
      h('td', { 'data-col': 'emailVerified' }, yesNo(u.emailVerified)),
      h('td', { 'data-col': 'createdAt' }, when(u.createdAt)),
      h('td', { 'data-col': 'balance' }),
      h('td', { 'data-col': 'held' }),
      h('td', { 'data-col': 'expiringSoon' }),
      h('td', { 'data-col': 'adjust' }, adjust),
    );
    accountCells(tr, u.credits);

    // One idempotency key per submission: the same action, amount and
    // reason sent again (a double click, a retry after a network error)
    // reuses it, so it applies once; a success or a change starts anew.
    let pending = null;
    adjust.addEventListener('submit', async (e) => {
      e.preventDefault();
      const action = e.submitter?.value === 'revoke' ? 'revoke' : 'grant';
      const n = Number(amount.value);
      if (!Number.isInteger(n) || n < 1) {
        toast('Enter a whole number of credits, at least 1.', 'error');
        amount.focus();
        return;
      }
      const why = reason.value.trim();
      if (!why) {
        toast('Give a reason; it is kept in the ledger.', 'error');
        reason.focus();
        return;
      }
      const fingerprint = `${action}|${n}|${why}`;
      if (!pending || pending.fingerprint !== fingerprint) pending = { fingerprint, key: idempotencyKey() };
      const { key } = pending;
      adjust.dataset.idempotencyKey = key;
      grant.disabled = true;
      revoke.disabled = true;
      const button = action === 'revoke' ? revoke : grant;
      button.setAttribute('aria-busy', 'true');
      try {
        const d = await gql(action === 'revoke' ? REVOKE : GRANT, { userId: u.id, amount: n, reason: why, key });
        const account = d.grantCredits || d.revokeCredits;
        if (pending?.key === key) pending = null;
        accountCells(tr, account);
        amount.value = '';
        reason.value = '';
        toast(`${action === 'revoke' ? 'Revoked' : 'Granted'} ${credits(n)} ${action === 'revoke' ? 'from' : 'to'} ${u.email}. Balance: ${credits(account.balance)}.`, 'success');
        if (u.id === ctx.me.id) ctx.refreshMe?.();
      } catch (err) {
        // No answer (offline, connection reset): the same click again
        // reuses the key, so it still applies once.
        toast(err instanceof TypeError ? `Could not reach Mage. Try again: the same ${action} applies only once.` : explain(err), 'error');
      } finally {
        grant.disabled = false;
        revoke.disabled = false;
        button.removeAttribute('aria-busy');
      }
    });
    return tr;
  }

  let loads = 0;
  async function load(reset) {
    if (reset) after = null;
    // Only the latest search may fill the table (an earlier one answering
    // late would put back rows the admin already searched away).
    const mine = ++loads;
    let conn;
    try {
      conn = (await gql(USERS_QUERY, { search: term || null, after })).users;
      if (mine !== loads) return;
    } catch (e) {
      toast(explain(e), 'error');
      if (reset) status.textContent = `Could not load users: ${explain(e)}`;
      return;
    }
    if (reset) tbody.replaceChildren();
    tbody.append(...conn.nodes.map(row));
    after = conn.pageInfo.endCursor;
    more.hidden = !conn.pageInfo.hasNextPage;
    const shown = tbody.children.length;
    status.textContent = shown
      ? `${shown} user${shown === 1 ? '' : 's'}${term ? ` matching "${term}"` : ''}${conn.pageInfo.hasNextPage ? ', more below' : ''}.`
      : term ? `No user's email contains "${term}".` : 'No users yet.';
    wrap.hidden = !shown;
  }

  form.addEventListener('submit', (e) => {
    e.preventDefault();
    term = search.value.trim();
    const q = new URLSearchParams({ tab: 'users' });
    if (term) q.set('search', term);
    history.replaceState(null, '', `/admin?${q}`);
    busy(go, () => load(true), explain);
  });
  more.addEventListener('click', () => busy(more, () => load(false), explain));
  await load(true);
}

// ---------------------------------------------------------------- catalog

const MODEL_FIELDS = 'id kind name backend workflow active resolutions inputs prices { resolution credits creditsPerSecond } maxDurationSeconds defaultDurationSeconds fps renderTimeoutSeconds maxAttempts sortOrder';
const PRODUCT_FIELDS = 'id kind name credits priceCents currency stripePriceId active sortOrder';
const CATALOG_QUERY = `query AdminCatalog { catalogModels { ${MODEL_FIELDS} } catalogProducts { ${PRODUCT_FIELDS} } }`;
const RESOLUTIONS = ['R480P', 'R720P', 'R1080P'];
const BACKENDS = ['SYNTHETIC', 'COMFYUI', 'REPLICATE'];

function select(id, name, values, current, labels = {}) {
  return h('select', { id, name }, values.map((v) => h('option', { value: v, selected: v === current }, labels[v] || v.toLowerCase())));
}

function checkbox(id, name, checked, text) {
  return h('div', { class: 'checks' }, h('label', { for: id }, h('input', { type: 'checkbox', id, name, checked: !!checked }), text));
}

function priceText(p) {
  return `${resolution(p.resolution)}: ${num(p.credits)}${p.creditsPerSecond ? ` + ${num(p.creditsPerSecond)}/s` : ''}`;
}

async function catalog({ panel }) {
  const modelsBox = h('div', { id: 'models' });
  const productsBox = h('div', { id: 'products' });
  const modelEditor = h('div', { id: 'model-editor' });
  const productEditor = h('div', { id: 'product-editor' });
  const newModel = h('button', { type: 'button', id: 'new-model', class: 'secondary', onclick: () => editModel(null, newModel) }, 'New model');
  const newProduct = h('button', { type: 'button', id: 'new-product', class: 'secondary', onclick: () => editProduct(null, newProduct) }, 'New product');
  fill(
    panel,
    h('div', { class: 'row admin-head' }, h('h2', {}, 'Models'), newModel),
    modelsBox,
    modelEditor,
    h('div', { class: 'row admin-head' }, h('h2', {}, 'Products'), newProduct),
    productsBox,
    productEditor,
  );

  let data = { catalogModels: [], catalogProducts: [] };

  async function load() {
    try {
      data = await gql(CATALOG_QUERY);
    } catch (e) {
      fill(modelsBox, errorBox(e, 'the catalogue'));
      fill(productsBox);
      return;
    }
    showModels();
    showProducts();
  }

  function showModels() {
    catalogTable(modelsBox, 'models-table', data.catalogModels, 'model', editModel,
      ['ID', 'Name', 'Kind', 'Backend', 'Workflow', 'Inputs', 'Prices (credits)', 'Active', 'Order'],
      (m) => [
        h('td', { class: 'admin-code' }, m.id),
        h('td', {}, m.name),
        h('td', {}, m.kind.toLowerCase()),
        h('td', {}, m.backend.toLowerCase()),
        h('td', { class: 'admin-code' }, m.workflow),
        h('td', {}, m.inputs.length ? m.inputs.map((k) => k.toLowerCase()).join(', ') : 'text only'),
        h('td', { class: 'admin-nowrap' }, m.prices.map((pr) => h('div', {}, priceText(pr)))),
        h('td', { 'data-col': 'active' }, yesNo(m.active)),
        h('td', {}, num(m.sortOrder)),
      ]);
  }

  function showProducts() {
    catalogTable(productsBox, 'products-table', data.catalogProducts, 'product', editProduct,
      ['ID', 'Name', 'Kind', 'Credits', 'Price', 'Stripe price', 'Active', 'Order'],
      (p) => [
        h('td', { class: 'admin-code' }, p.id),
        h('td', {}, p.name),
        h('td', {}, p.kind.toLowerCase()),
        h('td', {}, num(p.credits)),
        h('td', {}, money(p.priceCents, p.currency)),
        h('td', { class: 'admin-code' }, p.stripePriceId || '—'),
        h('td', { 'data-col': 'active' }, yesNo(p.active)),
        h('td', {}, num(p.sortOrder)),
      ]);
  }

  /** A catalogue list: one row per item, each with its Edit button. */
  function catalogTable(box, id, list, what, onEdit, headers, cells) {
    fill(
      box,
      list.length
        ? table(id, null, [...headers, 'Action'], list.map((item) => {
            const edit = h('button', { type: 'button', class: 'secondary edit', [`data-edit-${what}`]: item.id, 'aria-label': `Edit ${what} ${item.id}` }, 'Edit');
            edit.addEventListener('click', () => onEdit(item, edit));
            return h('tr', { [`data-${what}-id`]: item.id }, ...cells(item), h('td', {}, edit));
          }))
        : h('p', { class: 'muted' }, `No ${what}s yet.`),
    );
  }

  function closeEditor(box, opener) {
    fill(box);
    if (opener?.isConnected) opener.focus();
  }

  function editModel(m, opener) {
    const isNew = !m;
    const v = m || { kind: 'IMAGE', backend: 'SYNTHETIC', workflow: '', inputs: [], prices: [], active: true, fps: 24 };
    const idInput = isNew ? h('input', { type: 'text', id: 'model-id', name: 'id', required: true, pattern: '[a-z0-9]+(-[a-z0-9]+)*', maxlength: '63', autocomplete: 'off' }) : null;
    const name = h('input', { type: 'text', id: 'model-name', name: 'name', required: true, maxlength: '100', value: v.name || '' });
    const kind = select('model-kind', 'kind', ['IMAGE', 'VIDEO'], v.kind);
    const backend = select('model-backend', 'backend', BACKENDS, v.backend, { COMFYUI: 'ComfyUI' });
    const workflow = h('input', { type: 'text', id: 'model-workflow', name: 'workflow', required: true, value: v.workflow || '' });
    const inputs = h('input', { type: 'text', id: 'model-inputs', name: 'inputs', value: v.inputs.join(', '), autocomplete: 'off' });
    const priceRows = RESOLUTIONS.map((r) => {
      const p = v.prices.find((x) => x.resolution === r);
      const on = h('input', { type: 'checkbox', id: `price-${r}-on`, name: `price-${r}-on`, checked: !!p });
      const cr = h('input', { type: 'number', id: `price-${r}-credits`, name: `price-${r}-credits`, min: '0', step: '1', value: p ? String(p.credits) : '', 'aria-label': `${resolution(r)} credits` });
      const cps = h('input', { type: 'number', id: `price-${r}-cps`, name: `price-${r}-cps`, min: '0', step: '1', value: p ? String(p.creditsPerSecond) : '', 'aria-label': `${resolution(r)} credits per second` });
      // Typing a price offers the resolution.
      for (const input of [cr, cps]) input.addEventListener('input', () => { if (input.value !== '') on.checked = true; });
      return { r, on, cr, cps };
    });
    const intField = (id, label, value, hint) => field(label, h('input', { type: 'number', id, name: id, step: '1', value: value == null ? '' : String(value) }), hint);
    const active = checkbox('model-active', 'active', v.active, 'Active (on offer)');
    const save = h('button', { type: 'submit', id: 'model-save' }, isNew ? 'Create model' : 'Save model');
    const cancel = h('button', { type: 'button', class: 'secondary', id: 'model-cancel', onclick: () => closeEditor(modelEditor, opener) }, 'Cancel');
    const title = isNew ? 'New model' : `Edit model ${m.id}`;
    const form = editorForm('model-form', title, isNew,
      h(
        'div',
        { class: 'admin-form-grid' },
        idInput ? field('ID', idInput, 'Lowercase letters and digits in dash-separated words, e.g. flux-dev. It cannot change later.') : null,
        field('Name', name),
        field('Kind', kind),
        field('Backend', backend),
        field('Workflow', workflow, 'A synthetic workflow (text-to-video, text-to-image, image-edit, image-to-video) or a template name.'),
        field('Inputs', inputs, 'Asset kinds it renders from, in order, comma-separated (IMAGE, VIDEO); empty for text only.'),
      ),
      h(
        'fieldset',
        {},
        h('legend', {}, 'Prices'),
        h('p', { class: 'muted admin-note' }, 'Price = credits + credits per second × duration (images: no per-second part).'),
        h(
          'div',
          { class: 'scroll' },
          h(
            'table',
            { class: 'admin-prices' },
            h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Resolution'), h('th', { scope: 'col' }, 'Credits'), h('th', { scope: 'col' }, 'Credits per second'))),
            h('tbody', {}, priceRows.map(({ r, on, cr, cps }) =>
              h('tr', { 'data-resolution': r }, h('td', {}, h('label', { for: on.id, class: 'admin-inline' }, on, `Offer ${resolution(r)}`)), h('td', {}, cr), h('td', {}, cps)),
            )),
          ),
        ),
      ),
      h(
        'div',
        { class: 'admin-form-grid' },
        intField('model-maxDurationSeconds', 'Max duration (s)', v.maxDurationSeconds, 'Video models only.'),
        intField('model-defaultDurationSeconds', 'Default duration (s)', v.defaultDurationSeconds, 'Video models only.'),
        intField('model-fps', 'Frames per second', v.fps, '1 to 120; empty means 24.'),
        intField('model-renderTimeoutSeconds', 'Render timeout (s)', v.renderTimeoutSeconds, 'Empty keeps the deployment’s.'),
        intField('model-maxAttempts', 'Max attempts', v.maxAttempts, '1 to 20; empty keeps the deployment’s.'),
        intField('model-sortOrder', 'Sort order', v.sortOrder, 'Ascending; empty keeps its place.'),
      ),
      active,
      h('div', { class: 'row' }, save, cancel),
    );
    const val = (id) => form.querySelector(`#${id}`);
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      busy(save, async () => {
        const input = {
          name: name.value.trim(),
          kind: kind.value,
          backend: backend.value,
          workflow: workflow.value.trim(),
          inputs: inputs.value.split(/[\s,]+/).filter(Boolean).map((s) => s.toUpperCase()),
          prices: [],
          maxDurationSeconds: intOrNull(val('model-maxDurationSeconds')),
          defaultDurationSeconds: intOrNull(val('model-defaultDurationSeconds')),
          fps: intOrNull(val('model-fps')),
          renderTimeoutSeconds: intOrNull(val('model-renderTimeoutSeconds')),
          maxAttempts: intOrNull(val('model-maxAttempts')),
          active: val('model-active').checked,
          sortOrder: intOrNull(val('model-sortOrder')),
        };
        const bad = input.inputs.find((k) => k !== 'IMAGE' && k !== 'VIDEO');
        if (bad) throw new Error(`Inputs: "${bad}" is not IMAGE or VIDEO.`);
        for (const { r, on, cr, cps } of priceRows) {
          if (!on.checked) continue;
          const c = intOrNull(cr);
          if (c == null) throw new Error(`Give the credits of ${resolution(r)}, or leave it out.`);
          input.prices.push({ resolution: r, credits: c, creditsPerSecond: intOrNull(cps) ?? 0 });
        }
        if (!input.prices.length) throw new Error('Offer at least one resolution.');
        let saved;
        if (isNew) {
          const id = idInput.value.trim();
          if (!id) throw new Error('Give the model an ID.');
          saved = (await gql(`mutation CreateModel($id: String!, $input: ModelInput!) { createModel(id: $id, input: $input) { id } }`, { id, input })).createModel;
        } else {
          saved = (await gql(`mutation UpdateModel($id: ID!, $input: ModelInput!) { updateModel(id: $id, input: $input) { id } }`, { id: m.id, input })).updateModel;
        }
        await afterSave(`Model ${saved.id} ${isNew ? 'created' : 'saved'}.`, modelEditor, modelsBox.id, `data-edit-model="${CSS.escape(saved.id)}"`);
      }, explain);
    });
    showEditor(modelEditor, form, idInput || name);
  }

  function editProduct(p, opener) {
    const isNew = !p;
    const v = p || { kind: 'PACK', currency: 'USD', active: true };
    const name = h('input', { type: 'text', id: 'product-name', name: 'name', required: true, maxlength: '100', value: v.name || '' });
    const kind = select('product-kind', 'kind', ['PACK', 'PLAN'], v.kind);
    const creditsIn = h('input', { type: 'number', id: 'product-credits', name: 'credits', min: '1', step: '1', required: true, value: v.credits == null ? '' : String(v.credits) });
    const price = h('input', { type: 'number', id: 'product-priceCents', name: 'priceCents', min: '0', step: '1', required: true, value: v.priceCents == null ? '' : String(v.priceCents) });
    const currency = h('input', { type: 'text', id: 'product-currency', name: 'currency', required: true, maxlength: '3', value: v.currency || 'USD', autocomplete: 'off' });
    const stripePrice = h('input', { type: 'text', id: 'product-stripePriceId', name: 'stripePriceId', value: v.stripePriceId || '', autocomplete: 'off' });
    const sort = h('input', { type: 'number', id: 'product-sortOrder', name: 'sortOrder', step: '1', value: v.sortOrder == null ? '' : String(v.sortOrder) });
    const active = checkbox('product-active', 'active', v.active, 'Active (on sale)');
    const save = h('button', { type: 'submit', id: 'product-save' }, isNew ? 'Create product' : 'Save product');
    const cancel = h('button', { type: 'button', class: 'secondary', id: 'product-cancel', onclick: () => closeEditor(productEditor, opener) }, 'Cancel');
    const title = isNew ? 'New product' : `Edit product ${p.id}`;
    const form = editorForm('product-form', title, isNew,
      h(
        'div',
        { class: 'admin-form-grid' },
        field('Name', name, isNew ? 'Its ID is made from the name.' : null),
        field('Kind', kind),
        field('Credits', creditsIn, 'Per pack, or per period of a plan.'),
        field('Price (cents)', price, 'In the currency’s smallest unit: 999 is 9.99.'),
        field('Currency', currency, 'ISO 4217, e.g. USD.'),
        field('Stripe price ID', stripePrice, 'Required for a plan (price_…); empty for a pack.'),
        field('Sort order', sort, 'Ascending; empty keeps its place.'),
      ),
      active,
      h('div', { class: 'row' }, save, cancel),
    );
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      busy(save, async () => {
        const input = {
          name: name.value.trim(),
          kind: kind.value,
          credits: intOrNull(creditsIn),
          priceCents: intOrNull(price),
          currency: currency.value.trim().toUpperCase(),
          stripePriceId: stripePrice.value.trim() || null,
          active: form.querySelector('#product-active').checked,
          sortOrder: intOrNull(sort),
        };
        if (input.credits == null) throw new Error('Give the credits it grants.');
        if (input.priceCents == null) throw new Error('Give its price in cents.');
        let saved;
        if (isNew) {
          saved = (await gql(`mutation CreateProduct($input: ProductInput!) { createProduct(input: $input) { id } }`, { input })).createProduct;
        } else {
          saved = (await gql(`mutation UpdateProduct($id: ID!, $input: ProductInput!) { updateProduct(id: $id, input: $input) { id } }`, { id: p.id, input })).updateProduct;
        }
        await afterSave(`Product ${saved.id} ${isNew ? 'created' : 'saved'}.`, productEditor, productsBox.id, `data-edit-product="${CSS.escape(saved.id)}"`);
      }, explain);
    });
    showEditor(productEditor, form, name);
  }

  /** A catalogue editor's form: its title, then its fields. */
  function editorForm(id, title, isNew, ...body) {
    return h(
      'form',
      { id, class: 'card admin-form', 'aria-label': title, 'data-mode': isNew ? 'create' : 'update', novalidate: true },
      h('h3', {}, title),
      ...body,
    );
  }

  function showEditor(editor, form, first) {
    fill(editor, form);
    form.scrollIntoView({ block: 'start', behavior: 'smooth' });
    first.focus({ preventScroll: true });
  }

  /** After a save: say so, close the editor, reload, focus the row's Edit. */
  async function afterSave(message, editor, boxId, editAttr) {
    toast(message, 'success');
    fill(editor);
    await load();
    document.getElementById(boxId)?.querySelector(`button[${editAttr}]`)?.focus();
  }

  await load();
}

// ----------------------------------------------------------------- stripe

const EVENTS_QUERY = `query AdminStripeEvents($status: String) { stripeEvents(status: $status, first: 50) { id type status error receivedAt processedAt } }`;
const REPLAY = `mutation ReplayStripeEvent($id: ID!) { replayStripeEvent(id: $id) { id status error } }`;
const EVENT_STATUSES = ['failed', 'received', 'processed', 'ignored', 'all'];

async function stripe({ panel, ctx }) {
  const asked = ctx.query.get('status');
  const current = EVENT_STATUSES.includes(asked) ? asked : 'failed';
  const filter = h('select', { id: 'stripe-status', name: 'status' }, EVENT_STATUSES.map((s) => h('option', { value: s, selected: s === current }, s)));
  const list = h('div', { id: 'stripe-events' });
  fill(
    panel,
    h('h2', {}, 'Stripe events'),
    h('p', { class: 'muted' }, 'Events Stripe sent, newest first. Replaying settles an event again; one already processed or ignored is never applied twice.'),
    h('div', { class: 'admin-filter' }, field('Status', filter)),
    list,
  );

  async function load() {
    const status = filter.value === 'all' ? null : filter.value;
    let events;
    events = await listInto(list, () => gql(EVENTS_QUERY, { status }).then((d) => d.stripeEvents), 'the events', h('p', { class: 'muted', id: 'stripe-none' }, status ? `No ${status} events.` : 'No events yet.'));
    if (!events) return;
    fill(
      list,
      table(
        'stripe-table',
        null,
        ['Event', 'Type', 'Status', 'Error', 'Received', 'Processed', 'Action'],
        events.map((ev) => {
          const replay = actionButton('Replay', 'replay', `Replay event ${ev.id}`, { 'data-event-id': ev.id }, async () => {
            const r = (await gql(REPLAY, { id: ev.id })).replayStripeEvent;
            toast(`Event ${r.id} is ${r.status}${r.error ? `: ${r.error}` : ''}.`, r.status === 'failed' ? 'error' : 'success');
            await load();
          });
          return h(
            'tr',
            { 'data-event-id': ev.id, 'data-status': ev.status },
            h('td', { class: 'admin-code' }, ev.id),
            h('td', {}, ev.type),
            h('td', {}, statusBadge(ev.status)),
            h('td', { class: 'admin-error' }, ev.error || '—'),
            h('td', {}, when(ev.receivedAt)),
            h('td', {}, ev.processedAt ? when(ev.processedAt) : '—'),
            h('td', {}, replay),
          );
        }),
      ),
    );
  }

  filter.addEventListener('change', () => {
    history.replaceState(null, '', `/admin?${new URLSearchParams({ tab: 'stripe', status: filter.value })}`);
    load();
  });
  await load();
}

/** Loads a list into `box`: the list, or null after showing the error or
 * `empty` there. */
async function listInto(box, load, what, empty) {
  let items;
  try {
    items = await load();
  } catch (e) {
    fill(box, errorBox(e, what));
    return null;
  }
  if (!items.length) {
    fill(box, empty);
    return null;
  }
  return items;
}

/** A row's action: busy while `run` runs, its error as a toast. */
function actionButton(label, cls, ariaLabel, data, run) {
  const button = h('button', { type: 'button', class: `secondary ${cls}`, 'aria-label': ariaLabel, ...data }, label);
  button.addEventListener('click', () => busy(button, run, explain));
  return button;
}
