// The app's only way to Mage: GraphQL over HTTP (with Automatic Persisted
// Queries where the browser can hash) and graphql-ws for subscriptions,
// exactly as any other client would use the API.
import { createClient } from '/web/vendor/graphql-ws.js';

const STORE = 'mage.session';

/** The signed-in session: { token, expiresAt, refreshToken, user } or null. */
export function session() {
  try {
    return JSON.parse(localStorage.getItem(STORE));
  } catch {
    return null;
  }
}

const listeners = new Set();
/** Calls `fn(session)` whenever the session changes (sign in, out, refresh). */
export function onSession(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

export function setSession(auth) {
  const before = session();
  if (auth) localStorage.setItem(STORE, JSON.stringify(auth));
  else localStorage.removeItem(STORE);
  // A socket belongs to its session, not to the access token it opened
  // with: a refresh keeps it (and its subscriptions); another user or
  // signing out closes it.
  if (!auth || before?.user?.id !== auth.user?.id) resetSocket();
  listeners.forEach((fn) => fn(auth));
}

/** An error the API answered, with its `extensions.code`. */
export class ApiError extends Error {
  constructor(errors) {
    const first = errors[0] || {};
    super(first.message || 'Something went wrong');
    this.errors = errors;
    this.code = first.extensions?.code || 'INTERNAL';
    this.extensions = first.extensions || {};
  }
}

async function sha256(text) {
  if (!globalThis.crypto?.subtle) return null; // not a secure context
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(text));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('');
}

const hashes = new Map();
async function hashOf(query) {
  if (!hashes.has(query)) hashes.set(query, await sha256(query));
  return hashes.get(query);
}

async function post(body, token) {
  const headers = { 'Content-Type': 'application/json', Accept: 'application/graphql-response+json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  const res = await fetch('/graphql', { method: 'POST', headers, body: JSON.stringify(body) });
  let json;
  try {
    json = await res.json();
  } catch {
    throw new ApiError([{ message: `The server answered ${res.status}`, extensions: { code: 'INTERNAL' } }]);
  }
  return json;
}

let refreshing = null;
/**
 * Trades the refresh token for new credentials once, however many ask.
 * Tabs share the session, and a refresh token shown twice ends it, so tabs
 * take turns (Web Locks) and a tab that finds the session already
 * refreshed by another uses that.
 */
async function refresh() {
  const stale = session()?.token;
  const run = async () => {
    const s = session();
    if (!s?.refreshToken) return null;
    if (s.token !== stale) return s;
    const json = await post({
      query: `mutation Refresh($t: String!) { refreshSession(refreshToken: $t) { ${AUTH_FIELDS} } }`,
      variables: { t: s.refreshToken },
    });
    if (json.errors) {
      setSession(null);
      return null;
    }
    setSession(json.data.refreshSession);
    return json.data.refreshSession;
  };
  refreshing ??= (navigator.locks ? navigator.locks.request('mage.refresh', run) : run()).finally(() => {
    refreshing = null;
  });
  return refreshing;
}

export const AUTH_FIELDS = 'token expiresAt refreshToken user { id email role emailVerified }';

async function currentToken() {
  let s = session();
  if (s && new Date(s.expiresAt).getTime() - Date.now() < 30_000) s = await refresh();
  return s?.token;
}

/**
 * Runs a query or mutation; resolves `data`, rejects with an ApiError.
 * Queries go as a hash first (APQ) and with their text only when the
 * server does not know the hash yet; mutations always carry their text.
 */
export async function gql(query, variables = {}) {
  let token = await currentToken();
  const persisted = !/^\s*mutation\b/.test(query) ? await hashOf(query) : null;
  const ext = persisted ? { persistedQuery: { version: 1, sha256Hash: persisted } } : undefined;
  let json = await post(persisted ? { variables, extensions: ext } : { query, variables }, token);
  if (json.errors?.[0]?.extensions?.code === 'PERSISTED_QUERY_NOT_FOUND') {
    json = await post({ query, variables, extensions: ext }, token);
  }
  if (json.errors?.[0]?.extensions?.code === 'UNAUTHENTICATED' && session()) {
    token = (await refresh())?.token;
    if (token) json = await post({ query, variables }, token);
  }
  if (json.errors && !json.data) throw new ApiError(json.errors);
  if (json.errors) {
    // A partial answer: the fields that failed are null; say why.
    const err = new ApiError(json.errors);
    err.data = json.data;
    throw err;
  }
  return json.data;
}

let socket = null;
function resetSocket() {
  socket?.dispose();
  socket = null;
}

function client() {
  socket ??= createClient({
    url: `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/graphql`,
    lazy: true,
    retryAttempts: Infinity,
    shouldRetry: () => true,
    connectionParams: async () => {
      const token = await currentToken();
      return token ? { Authorization: `Bearer ${token}` } : {};
    },
  });
  return socket;
}

/**
 * Subscribes; `onData(data)` for every event, `onError(ApiError)` once if
 * it fails. Returns the function that unsubscribes.
 */
export function subscribe(query, variables, onData, onError = () => {}, onComplete = () => {}) {
  return client().subscribe(
    { query, variables },
    {
      next: (msg) => (msg.errors ? onError(new ApiError(msg.errors)) : onData(msg.data)),
      error: (e) => onError(new ApiError(Array.isArray(e) ? e : [{ message: String(e?.reason || e?.message || e) }])),
      complete: onComplete,
    },
  );
}

/** What a person should read for an error, by its `extensions.code`. */
export function explain(err) {
  const code = err?.code;
  const retry = err?.extensions?.retryAfterSeconds;
  switch (code) {
    case 'INSUFFICIENT_CREDITS':
      return 'You do not have enough credits for this. Buy more on the Billing page.';
    case 'RATE_LIMITED':
      return retry
        ? `Too many attempts. Try again in ${retry < 60 ? `${retry} seconds` : `${Math.ceil(retry / 60)} minutes`}.`
        : 'Too many attempts. Wait a moment and try again.';
    case 'UNAUTHENTICATED':
      return 'Please sign in again.';
    case 'FORBIDDEN':
      return 'You are not allowed to do that.';
    case 'NOT_FOUND':
      return 'That no longer exists.';
    case 'QUOTA_EXCEEDED':
      return 'Your storage is full. Delete some uploads first.';
    case 'CONFLICT':
    case 'BAD_USER_INPUT':
      return err.message;
    case 'PAYMENT_PROVIDER_ERROR':
      return 'The payment provider could not be reached. Nothing was charged; try again shortly.';
    default:
      return err?.message && code !== 'INTERNAL'
        ? err.message
        : 'Something went wrong on our side. Try again; if it keeps happening, tell us.';
  }
}
