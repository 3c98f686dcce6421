// The shell: routes (History API; Mage serves the page at each of them),
// the header with the live balance, the low-credit warning and the toasts.
import { gql, session, setSession, onSession, subscribe, explain } from './api.js';
import { h, fill, toast, credits } from './ui.js';

const ROUTES = [
  ['/signin', () => import('./pages/auth.js'), 'signin'],
  ['/signup', () => import('./pages/auth.js'), 'signup'],
  ['/forgot-password', () => import('./pages/auth.js'), 'forgot'],
  ['/reset-password', () => import('./pages/auth.js'), 'reset'],
  ['/verify-email', () => import('./pages/auth.js'), 'verify'],
  ['/create', () => import('./pages/create.js'), null, true],
  ['/generations/:id', () => import('./pages/generation.js'), null, true],
  ['/history', () => import('./pages/history.js'), null, true],
  ['/assets', () => import('./pages/assets.js'), null, true],
  ['/billing', () => import('./pages/billing.js'), 'billing', true],
  ['/checkout/success', () => import('./pages/billing.js'), 'success', true],
  ['/checkout/canceled', () => import('./pages/billing.js'), 'canceled', true],
  ['/account', () => import('./pages/account.js'), null, true],
  ['/admin', () => import('./pages/admin.js'), null, true],
];

const NAV = [
  ['/create', 'Create'],
  ['/history', 'History'],
  ['/assets', 'Uploads'],
  ['/billing', 'Billing'],
  ['/account', 'Account'],
];

const state = { me: null, account: null, models: null, cleanup: null, stopCredits: null };

function match(path) {
  for (const [pattern, load, variant, needsAuth] of ROUTES) {
    const names = [];
    const re = new RegExp(`^${pattern.replace(/:(\w+)/g, (_, n) => (names.push(n), '([^/]+)'))}/?$`);
    const m = path.match(re);
    if (m) return { load, variant, needsAuth, params: Object.fromEntries(names.map((n, i) => [n, decodeURIComponent(m[i + 1])])) };
  }
  return null;
}

export function navigate(to, { replace = false } = {}) {
  if (replace) history.replaceState(null, '', to);
  else history.pushState(null, '', to);
  render();
}

/** The catalogue, loaded once per page load. */
export async function models() {
  state.models ??= gql(`query Models { models { id kind name resolutions maxDurationSeconds defaultDurationSeconds inputs prices { resolution credits creditsPerSecond } } }`).then((d) => d.models);
  return state.models;
}

/** The cheapest thing one can make: a model's cheapest resolution, one
 * second of video (what the CREDITS_LOW webhook uses too). */
async function cheapest() {
  const all = await models().catch(() => []);
  const prices = all.flatMap((m) => m.prices.map((p) => p.credits + p.creditsPerSecond));
  return prices.length ? Math.min(...prices) : 0;
}

async function loadMe() {
  if (!session()) return (state.me = null);
  try {
    const d = await gql(`query Me { me { id email role emailVerified credits { balance held expiringSoon } } }`);
    state.me = d.me;
    if (d.me) state.account = d.me.credits;
  } catch (e) {
    if (e.code === 'UNAUTHENTICATED') setSession(null);
    state.me = null;
  }
  return state.me;
}

function header() {
  const me = state.me;
  const path = location.pathname;
  const links = me ? [...NAV, ...(me.role === 'ADMIN' ? [['/admin', 'Admin']] : [])] : [];
  return h(
    'header',
    { class: 'top' },
    h('a', { href: me ? '/create' : '/signin', class: 'brand', 'data-link': true }, h('span', { 'aria-hidden': 'true' }, '✦ '), 'Mage'),
    me
      ? h(
          'nav',
          { 'aria-label': 'Main' },
          h('ul', {}, links.map(([href, label]) =>
            h('li', {}, h('a', { href, 'data-link': true, 'aria-current': path.startsWith(href) ? 'page' : null }, label)),
          )),
        )
      : null,
    me
      ? h(
          'div',
          { class: 'who' },
          h('a', { href: '/billing', 'data-link': true, class: 'balance', id: 'balance', 'aria-live': 'polite', title: 'Your credits (available)' }, balanceText()),
          h('button', { class: 'link', onclick: signOut }, 'Sign out'),
        )
      : null,
  );
}

function balanceText() {
  const a = state.account;
  if (!a) return '…';
  return credits(a.balance - a.held);
}

async function updateLow() {
  const banner = document.getElementById('low');
  if (!banner) return;
  const a = state.account;
  const floor = await cheapest();
  const low = a && state.me && a.balance - a.held < floor;
  fill(
    banner,
    low
      ? h('p', {}, `Your balance is below the price of the cheapest generation (${credits(floor)}). `, h('a', { href: '/billing', 'data-link': true }, 'Buy credits'))
      : null,
  );
  banner.hidden = !low;
}

function watchCredits() {
  state.stopCredits?.();
  state.stopCredits = null;
  if (!state.me) return;
  state.stopCredits = subscribe(
    `subscription Credits { creditsChanged { balance held expiringSoon } }`,
    {},
    (d) => {
      state.account = d.creditsChanged;
      const el = document.getElementById('balance');
      if (el) el.textContent = balanceText();
      updateLow();
      document.dispatchEvent(new CustomEvent('mage:credits', { detail: state.account }));
    },
    () => {},
  );
}

async function signOut() {
  try {
    await gql(`mutation Logout { logout }`);
  } catch {
    /* the session may be gone already */
  }
  setSession(null);
  navigate('/signin');
}

let rendering = 0;
async function render() {
  const mine = ++rendering;
  state.cleanup?.();
  state.cleanup = null;
  if (location.pathname === '/') {
    return navigate(session() ? '/create' : '/signin', { replace: true });
  }
  const route = match(location.pathname);
  if (!route) {
    fill(document.getElementById('app'), h('header', { class: 'top' }, h('a', { href: '/', class: 'brand', 'data-link': true }, 'Mage')), h('main', { id: 'main', tabindex: '-1' }, h('h1', {}, 'Page not found'), h('p', {}, h('a', { href: '/', 'data-link': true }, 'Go to the start'))));
    return;
  }
  if (route.needsAuth && !session()) {
    return navigate(`/signin?next=${encodeURIComponent(location.pathname + location.search)}`, { replace: true });
  }
  if (session() && !state.me) await loadMe();
  if (route.needsAuth && !state.me) {
    return navigate(`/signin?next=${encodeURIComponent(location.pathname + location.search)}`, { replace: true });
  }
  const mod = await route.load();
  if (mine !== rendering) return;
  const main = h('main', { id: 'main', tabindex: '-1' });
  fill(document.getElementById('app'), h('a', { href: '#main', class: 'skip' }, 'Skip to content'), header(), h('div', { id: 'low', class: 'banner warn', role: 'status', hidden: true }), main);
  updateLow();
  const ctx = {
    params: route.params,
    query: new URLSearchParams(location.search),
    variant: route.variant,
    me: state.me,
    account: () => state.account,
    navigate,
    models,
    refreshMe: async () => {
      await loadMe();
      const el = document.getElementById('balance');
      if (el) el.textContent = balanceText();
      updateLow();
    },
    signedIn: async (auth, next) => {
      setSession(auth);
      await loadMe();
      watchCredits();
      navigate(next || '/create');
    },
  };
  try {
    state.cleanup = (await mod.default(main, ctx)) || null;
  } catch (e) {
    fill(main, h('h1', {}, 'Something went wrong'), h('p', { role: 'alert' }, explain(e)));
  }
  if (mine !== rendering) return;
  // Screen readers hear the new page: focus moves to its heading.
  const title = main.querySelector('h1');
  if (title) {
    document.title = `${title.textContent} · Mage`;
    title.setAttribute('tabindex', '-1');
    if (navigated) title.focus({ preventScroll: true });
  }
  document.body.dataset.ready = location.pathname;
  // Time to interactive of the first load (the browser test reads it).
  if (!performance.getEntriesByName('mage:interactive').length) performance.mark('mage:interactive');
}

let navigated = false;
document.addEventListener('click', (e) => {
  const a = e.target.closest('a[data-link]');
  if (!a || e.metaKey || e.ctrlKey || e.shiftKey || e.button !== 0) return;
  e.preventDefault();
  navigated = true;
  navigate(a.getAttribute('href'));
});
window.addEventListener('popstate', () => {
  navigated = true;
  render();
});
onSession((s) => {
  if (!s) {
    state.me = null;
    state.account = null;
    state.stopCredits?.();
    state.stopCredits = null;
  }
});

(async () => {
  if (session()) {
    await loadMe();
    watchCredits();
  }
  await render();
})().catch((e) => toast(explain(e), 'error'));
