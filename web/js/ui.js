// Small DOM helpers: elements are built, never parsed from strings, so text
// from the API can never become markup.

/** `h('button', { class: 'x', onclick }, 'text', child)` */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k in el && typeof v !== 'string') el[k] = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replaces an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

let toastId = 0;
/** A message in the polite live region; `kind` is info, success or error. */
export function toast(message, kind = 'info', action) {
  const region = document.getElementById('toasts');
  const id = `toast-${++toastId}`;
  const el = h(
    'div',
    { class: `toast ${kind}`, id, role: kind === 'error' ? 'alert' : 'status' },
    h('span', {}, message),
    action ? h('button', { class: 'link', onclick: () => { el.remove(); action.run(); } }, action.label) : null,
    h('button', { class: 'close', 'aria-label': 'Dismiss', onclick: () => el.remove() }, '×'),
  );
  region.append(el);
  setTimeout(() => el.remove(), kind === 'error' ? 12000 : 6000);
}

export function credits(n) {
  return `${Number(n).toLocaleString('en')} credit${n === 1 ? '' : 's'}`;
}

export function money(cents, currency) {
  try {
    return new Intl.NumberFormat('en', { style: 'currency', currency }).format(cents / 100);
  } catch {
    // A code Intl does not know (a product typed by hand) still shows.
    return `${(cents / 100).toFixed(2)} ${currency}`;
  }
}

/** A fresh idempotency key: a retry of the same submission reuses it. */
export function idempotencyKey() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  // randomUUID needs a secure context; getRandomValues does not.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return [...bytes].map((b) => b.toString(16).padStart(2, '0')).join('');
}

export function when(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return d.toLocaleString('en', { dateStyle: 'medium', timeStyle: 'short' });
}

export function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
  if (n < 1024 ** 3) return `${(n / 1024 / 1024).toFixed(1)} MB`;
  return `${(n / 1024 ** 3).toFixed(2)} GB`;
}

export function duration(seconds) {
  if (seconds == null) return '';
  const s = Math.round(seconds);
  return s < 60 ? `${s} s` : `${Math.floor(s / 60)} min ${s % 60} s`;
}

/** `RESOLUTION` enum values as people say them. */
export function resolution(r) {
  return { R480P: '480p', R720P: '720p', R1080P: '1080p' }[r] || r;
}

export function statusBadge(status) {
  return h('span', { class: `badge ${status.toLowerCase()}` }, status.toLowerCase());
}

/** A labelled form field. */
export function field(label, input, hint) {
  const id = input.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  input.id = id;
  const hintEl = hint ? h('small', { id: `${id}-hint` }, hint) : null;
  if (hintEl) input.setAttribute('aria-describedby', hintEl.id);
  return h('div', { class: 'field' }, h('label', { for: id }, label), input, hintEl);
}

/** Checkboxes under a legend, from `[value, label, checked]` items;
 * `values()` gives the checked values in order. */
export function checkGroup(legend, items) {
  const inputs = items.map(([value, , checked]) => h('input', { type: 'checkbox', value, checked }));
  const el = h('fieldset', {}, h('legend', {}, legend), h('div', { class: 'checks' }, items.map(([, label], i) => h('label', {}, inputs[i], label))));
  return { el, values: () => inputs.filter((i) => i.checked).map((i) => i.value) };
}

/** Puts a list item's element in `list` under its id: in place of the one
 * shown before, else first (`prepend`) or last. */
export function upsert(list, shown, id, el, prepend = false) {
  const old = shown.get(id);
  if (old) old.replaceWith(el);
  else if (prepend) list.prepend(el);
  else list.append(el);
  shown.set(id, el);
}

/** Runs `fn` with the button disabled and busy, showing errors as toasts. */
export async function busy(button, fn, explain) {
  button.disabled = true;
  button.setAttribute('aria-busy', 'true');
  try {
    return await fn();
  } catch (e) {
    toast(explain ? explain(e) : e.message, 'error');
    return undefined;
  } finally {
    button.disabled = false;
    button.removeAttribute('aria-busy');
  }
}

/** Plays an HLS stream: natively where the browser can, else with hls.js
 * (loaded only then). */
export async function playHls(video, url) {
  if (video.canPlayType('application/vnd.apple.mpegurl')) {
    video.src = url;
    return;
  }
  const { default: Hls } = await import('/web/vendor/hls.mjs');
  if (!Hls.isSupported()) {
    video.src = url;
    return;
  }
  const hls = new Hls({ workerPath: '/web/vendor/hls.worker.js' });
  hls.loadSource(url);
  hls.attachMedia(video);
  video.hls = hls;
}
