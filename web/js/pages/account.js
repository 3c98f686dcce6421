// Account: sessions, API keys (secret shown once), webhook endpoints with
// their delivery log, password, email verification, deletion.
import { gql, explain, setSession, AUTH_FIELDS } from '../api.js';
import { h, fill, field, busy, toast, when, statusBadge, checkGroup } from '../ui.js';

const SCOPES = [
  ['READ', 'Read', 'see generations, assets, orders and balances'],
  ['GENERATE', 'Generate', 'create, cancel and delete generations and uploads'],
  ['BILLING', 'Billing', 'start checkouts'],
];
const EVENTS = ['GENERATION_STARTED', 'GENERATION_SUCCEEDED', 'GENERATION_FAILED', 'GENERATION_CANCELED', 'ASSET_READY', 'ASSET_REJECTED', 'ORDER_PAID', 'CREDITS_LOW'];
const ENDPOINT = 'id url events enabled description createdAt disabledReason previousSecretExpiresAt';
const DELIVERY = 'id eventId eventType status attempts lastStatusCode lastError nextAttemptAt createdAt requestBody attemptLog { attempt startedAt durationMs statusCode error responseBody }';

export default async function account(main, ctx) {
  const sessions = h('section', { 'aria-labelledby': 'sessions-h' });
  const keys = h('section', { 'aria-labelledby': 'keys-h' });
  const hooks = h('section', { 'aria-labelledby': 'hooks-h' });
  const security = h('section', { 'aria-labelledby': 'security-h' });
  fill(
    main,
    h('h1', {}, 'Account'),
    h('p', {}, `Signed in as ${ctx.me.email}`, ctx.me.emailVerified ? '' : ' (not confirmed yet). ', ctx.me.emailVerified ? null : h('button', { class: 'link', onclick: (e) => busy(e.target, async () => {
      const d = await gql(`mutation Resend { resendVerification }`);
      toast(d.resendVerification ? 'A new confirmation link is on its way.' : 'Your address is confirmed already.', 'success');
    }, explain) }, 'Send the confirmation link again')),
    keys,
    hooks,
    sessions,
    security,
  );
  await Promise.all([loadSessions(sessions), loadKeys(keys), loadHooks(hooks)]);
  renderSecurity(security, ctx);
  return null;
}

async function loadSessions(root) {
  const { sessions } = await gql(`query Sessions { sessions { id createdAt lastUsedAt userAgent ipAddress current } }`);
  fill(
    root,
    h('h2', { id: 'sessions-h' }, 'Signed-in devices'),
    h('div', { class: 'scroll' }, h('table', {},
      h('thead', {}, h('tr', {}, ['Device', 'Address', 'Signed in', 'Last active', ''].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, sessions.map((s) => h('tr', {},
        h('td', {}, s.userAgent ? shortAgent(s.userAgent) : 'Unknown', s.current ? h('strong', {}, ' (this device)') : null),
        h('td', {}, s.ipAddress || ''),
        h('td', {}, when(s.createdAt)),
        h('td', {}, when(s.lastUsedAt)),
        h('td', {}, h('button', { class: 'secondary', 'aria-label': `Sign out ${s.current ? 'this device' : shortAgent(s.userAgent || 'device')}`, onclick: (e) => busy(e.target, async () => {
          await gql(`mutation Revoke($id: ID!) { revokeSession(id: $id) }`, { id: s.id });
          if (s.current) {
            setSession(null);
            location.assign('/signin');
            return;
          }
          toast('Signed out that device.', 'success');
          loadSessions(root);
        }, explain) }, 'Sign out')),
      ))))),
  );
}

function shortAgent(ua) {
  const browser = /Edg\//.test(ua) ? 'Edge' : /Chrom(e|ium)\//.test(ua) ? 'Chrome' : /Firefox\//.test(ua) ? 'Firefox' : /Safari\//.test(ua) ? 'Safari' : ua.split(' ')[0];
  const os = /Android/.test(ua) ? 'Android' : /iPhone|iPad/.test(ua) ? 'iOS' : /Mac OS/.test(ua) ? 'macOS' : /Windows/.test(ua) ? 'Windows' : /Linux/.test(ua) ? 'Linux' : '';
  return os ? `${browser} on ${os}` : browser;
}

async function loadKeys(root) {
  const { apiKeys } = await gql(`query Keys { apiKeys { id name prefix scopes createdAt lastUsedAt } }`);
  const name = h('input', { id: 'key-name', required: true, maxLength: 100, placeholder: 'Mobile app' });
  const scopes = checkGroup('Allowed to', SCOPES.map(([v, label, what]) => [v, [`${label} `, h('span', { class: 'muted' }, `(${what})`)], v !== 'BILLING']));
  const create = h('button', { type: 'submit', id: 'create-key' }, 'Create key');
  const secret = h('div', { id: 'key-secret', role: 'status' });
  fill(
    root,
    h('h2', { id: 'keys-h' }, 'API keys'),
    h('p', { class: 'muted' }, 'For servers and scripts: send a key as Authorization: Bearer <key>.'),
    h('form', {
      class: 'card',
      onsubmit: (e) => {
        e.preventDefault();
        busy(create, async () => {
          const d = await gql(`mutation CreateKey($name: String!, $scopes: [ApiKeyScope!]!) { createApiKey(name: $name, scopes: $scopes) { secret apiKey { id } } }`, { name: name.value.trim(), scopes: scopes.values() });
          await loadKeys(root);
          showSecret(root.querySelector('#key-secret'), 'Copy this key now: it is shown only once.', d.createApiKey.secret, 'new-key');
        }, explain);
      },
    },
    field('Name', name),
    scopes.el,
    h('div', { class: 'row' }, create),
    secret),
    apiKeys.length
      ? h('div', { class: 'scroll' }, h('table', { id: 'keys' },
          h('thead', {}, h('tr', {}, ['Name', 'Key', 'Scopes', 'Created', 'Last used', ''].map((t) => h('th', { scope: 'col' }, t)))),
          h('tbody', {}, apiKeys.map((k) => h('tr', {},
            h('td', {}, k.name),
            h('td', {}, h('code', {}, `${k.prefix}…`)),
            h('td', {}, k.scopes.map((s) => s.toLowerCase()).join(', ')),
            h('td', {}, when(k.createdAt)),
            h('td', {}, k.lastUsedAt ? when(k.lastUsedAt) : 'never'),
            h('td', {}, h('button', { class: 'danger', 'aria-label': `Revoke ${k.name}`, onclick: (e) => {
              if (!confirm(`Revoke ${k.name}? Anything using it stops working.`)) return;
              busy(e.target, async () => {
                await gql(`mutation RevokeKey($id: ID!) { revokeApiKey(id: $id) { id } }`, { id: k.id });
                toast('Key revoked.', 'success');
                loadKeys(root);
              }, explain);
            } }, 'Revoke')),
          )))))
      : h('p', { class: 'muted' }, 'No keys yet.'),
  );
}

async function loadHooks(root) {
  const { webhookEndpoints } = await gql(`query Hooks { webhookEndpoints { ${ENDPOINT} } }`);
  const url = h('input', { id: 'hook-url', type: 'url', required: true, placeholder: 'https://example.com/webhooks/mage' });
  const description = h('input', { id: 'hook-description', maxLength: 200 });
  const events = checkGroup('Events', EVENTS.map((ev) => [ev, eventName(ev), ev.startsWith('GENERATION_S')]));
  const create = h('button', { type: 'submit' }, 'Add endpoint');
  const secret = h('div', { id: 'hook-secret', role: 'status' });
  const log = h('div', { id: 'deliveries' });
  fill(
    root,
    h('h2', { id: 'hooks-h' }, 'Webhooks'),
    h('p', { class: 'muted' }, 'Mage posts signed events (Standard Webhooks) to your HTTPS endpoints, retrying for about 3 days.'),
    h('form', {
      class: 'card',
      onsubmit: (e) => {
        e.preventDefault();
        busy(create, async () => {
          const d = await gql(`mutation CreateHook($url: String!, $events: [WebhookEventType!]!, $description: String) { createWebhookEndpoint(url: $url, events: $events, description: $description) { secret endpoint { id } } }`, { url: url.value.trim(), events: events.values(), description: description.value.trim() || null });
          await loadHooks(root);
          showSecret(root.querySelector('#hook-secret'), 'Copy the signing secret now: it is shown only once.', d.createWebhookEndpoint.secret);
        }, explain);
      },
    },
    field('Endpoint URL', url),
    field('Description (optional)', description),
    events.el,
    h('div', { class: 'row' }, create),
    secret),
    webhookEndpoints.map((ep) => h('article', { class: 'card spaced', dataset: { endpoint: ep.id } },
      h('h3', { class: 'title' }, ep.url),
      ep.description ? h('p', {}, ep.description) : null,
      h('p', { class: 'row' }, ep.enabled ? h('span', { class: 'badge succeeded' }, 'enabled') : h('span', { class: 'badge failed' }, 'disabled'), h('span', { class: 'muted' }, ep.events.map(eventName).join(', '))),
      ep.disabledReason ? h('p', { class: 'error' }, ep.disabledReason) : null,
      h('div', { class: 'row' },
        h('button', { class: 'secondary', onclick: () => deliveries(log, ep) }, 'Delivery log'),
        h('button', { class: 'secondary', onclick: (e) => busy(e.target, async () => {
          await gql(`mutation Test($id: ID!) { sendTestWebhook(endpointId: $id) { id } }`, { id: ep.id });
          toast('Test event sent; see the delivery log.', 'success');
          deliveries(log, ep);
        }, explain) }, 'Send test'),
        h('button', { class: 'secondary', onclick: (e) => busy(e.target, async () => {
          await gql(`mutation Toggle($id: ID!, $on: Boolean!) { updateWebhookEndpoint(id: $id, enabled: $on) { id } }`, { id: ep.id, on: !ep.enabled });
          loadHooks(root);
        }, explain) }, ep.enabled ? 'Disable' : 'Enable'),
        h('button', { class: 'secondary', onclick: (e) => busy(e.target, async () => {
          const d = await gql(`mutation Rotate($id: ID!) { rotateWebhookSecret(id: $id) { secret } }`, { id: ep.id });
          showSecret(root.querySelector('#hook-secret'), 'Copy the new signing secret now: it is shown only once. The old one keeps signing beside it for 24 hours.', d.rotateWebhookSecret.secret);
        }, explain) }, 'New secret'),
        h('button', { class: 'danger', onclick: (e) => {
          if (!confirm(`Delete the endpoint ${ep.url} and its delivery log?`)) return;
          busy(e.target, async () => {
            await gql(`mutation DeleteHook($id: ID!) { deleteWebhookEndpoint(id: $id) }`, { id: ep.id });
            loadHooks(root);
          }, explain);
        } }, 'Delete'),
      ),
    )),
    log,
  );
}

/** A secret shown this once (an API key, a signing secret), with Copy. */
function showSecret(box, note, secret, id) {
  fill(
    box,
    h('p', {}, h('strong', {}, note)),
    h('p', { class: 'secret', id }, secret),
    h('button', { class: 'secondary', onclick: () => navigator.clipboard?.writeText(secret).then(() => toast('Copied.', 'success')) }, 'Copy'),
  );
  box.scrollIntoView({ block: 'nearest' });
}

/** `GENERATION_SUCCEEDED` as the payload names it: `generation.succeeded`. */
function eventName(type) {
  return type.toLowerCase().replace('_', '.');
}

async function deliveries(root, ep) {
  const d = await gql(`query Deliveries($id: ID!) { webhookDeliveries(endpointId: $id, first: 20) { nodes { ${DELIVERY} } } }`, { id: ep.id }).catch((e) => (toast(explain(e), 'error'), null));
  if (!d) return;
  const rows = d.webhookDeliveries.nodes;
  fill(
    root,
    h('h3', {}, `Deliveries to ${ep.url}`),
    rows.length
      ? h('div', { class: 'scroll' }, h('table', {},
          h('thead', {}, h('tr', {}, ['Event', 'Status', 'Attempts', 'Last answer', 'Created', ''].map((t) => h('th', { scope: 'col' }, t)))),
          h('tbody', {}, rows.map((r) => h('tr', {},
            h('td', {}, eventName(r.eventType), h('details', {}, h('summary', {}, 'Body and attempts'),
              h('pre', {}, r.requestBody || ''),
              h('ul', {}, r.attemptLog.map((a) => h('li', {}, `#${a.attempt} ${when(a.startedAt)}: ${a.statusCode ?? a.error ?? ''} in ${a.durationMs} ms`, a.responseBody ? h('pre', {}, a.responseBody) : null))))),
            h('td', {}, statusBadge(r.status), r.nextAttemptAt ? h('div', { class: 'muted' }, `next ${when(r.nextAttemptAt)}`) : null),
            h('td', {}, r.attempts),
            h('td', {}, r.lastStatusCode ?? r.lastError ?? ''),
            h('td', {}, when(r.createdAt)),
            h('td', {}, h('button', { class: 'secondary', onclick: (e) => busy(e.target, async () => {
              await gql(`mutation Redeliver($id: ID!) { redeliverWebhook(deliveryId: $id) { id } }`, { id: r.id });
              toast('Sent again.', 'success');
              deliveries(root, ep);
            }, explain) }, 'Redeliver')),
          )))))
      : h('p', { class: 'muted' }, 'Nothing delivered yet.'),
  );
  root.querySelector('h3')?.scrollIntoView({ behavior: 'smooth', block: 'start' });
}

function renderSecurity(root, ctx) {
  const current = h('input', { type: 'password', autocomplete: 'current-password', required: true });
  const next = h('input', { type: 'password', autocomplete: 'new-password', required: true, minLength: 8 });
  const change = h('button', { type: 'submit' }, 'Change password');
  const confirmPw = h('input', { type: 'password', autocomplete: 'current-password', required: true });
  const del = h('button', { type: 'submit', class: 'danger' }, 'Delete my account');
  fill(
    root,
    h('h2', { id: 'security-h' }, 'Password and account'),
    h('form', {
      class: 'card',
      onsubmit: (e) => {
        e.preventDefault();
        busy(change, async () => {
          const d = await gql(`mutation Change($a: String!, $b: String!) { changePassword(currentPassword: $a, newPassword: $b) { ${AUTH_FIELDS} } }`, { a: current.value, b: next.value });
          setSession(d.changePassword);
          current.value = next.value = '';
          toast('Password changed; your other devices were signed out.', 'success');
        }, explain);
      },
    }, field('Current password', current), field('New password', next, '8 to 128 characters.'), h('div', { class: 'row' }, change)),
    h('form', {
      class: 'card spaced',
      onsubmit: (e) => {
        e.preventDefault();
        if (!confirm('Delete your account for good? Your generations and uploads are deleted.')) return;
        busy(del, async () => {
          await gql(`mutation DeleteAccount($p: String!) { deleteAccount(password: $p) }`, { p: confirmPw.value });
          setSession(null);
          location.assign('/signup');
        }, explain);
      },
    }, h('p', {}, 'Deleting your account cancels what is running, deletes your media and signs out every device. Orders and the credit ledger are kept, anonymised.'), field('Password', confirmPw), h('div', { class: 'row' }, del)),
  );
  void ctx;
}
