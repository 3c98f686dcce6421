// Your generations, newest first: infinite scroll over the connection, a
// status filter, and cancel / retry / delete on each; live through
// `myGenerations`.
import { gql, subscribe, explain } from '../api.js';
import { h, fill, busy, toast, credits, when, statusBadge, field, upsert } from '../ui.js';

const FIELDS = 'id status progress stage queuePosition model kind prompt cost error createdAt output { posterUrl imageUrl }';
const STATUSES = ['QUEUED', 'RENDERING', 'TRANSCODING', 'SUCCEEDED', 'FAILED', 'CANCELED'];
const ACTIVE = ['QUEUED', 'RENDERING', 'TRANSCODING'];

export default async function history(main, ctx) {
  const status = ctx.query.get('status') || '';
  const filter = h('select', { id: 'status-filter' }, h('option', { value: '' }, 'All'), STATUSES.map((s) => h('option', { value: s, selected: s === status }, s.toLowerCase())));
  filter.addEventListener('change', () => ctx.navigate(filter.value ? `/history?status=${filter.value}` : '/history'));
  const list = h('div', { class: 'grid', id: 'history' });
  const more = h('p', { class: 'muted', role: 'status' });
  const sentinel = h('div', { 'aria-hidden': 'true' });
  fill(main, h('h1', {}, 'History'), h('div', { class: 'short' }, field('Show', filter)), list, more, sentinel);

  const cards = new Map();
  let after = null;
  let done = false;
  let loading = false;

  function card(g) {
    const thumb = g.output?.posterUrl || g.output?.imageUrl;
    const el = h(
      'article',
      { class: 'card', dataset: { id: g.id, status: g.status } },
      thumb ? h('img', { class: 'thumb', src: thumb, alt: '', loading: 'lazy' }) : h('div', { class: 'thumb', 'aria-hidden': 'true' }),
      h('h2', { class: 'title' }, h('a', { href: `/generations/${g.id}`, 'data-link': true }, g.prompt.length > 60 ? `${g.prompt.slice(0, 60)}…` : g.prompt)),
      h('p', { class: 'row' }, statusBadge(g.status), ACTIVE.includes(g.status) ? h('span', { class: 'muted' }, g.status === 'QUEUED' && g.queuePosition ? `#${g.queuePosition} in queue` : `${g.progress}%`) : null),
      h('p', { class: 'muted' }, `${g.model} · ${credits(g.cost)} · ${when(g.createdAt)}`),
      g.status === 'FAILED' && g.error ? h('p', { class: 'error' }, g.error) : null,
      h(
        'div',
        { class: 'row' },
        ACTIVE.includes(g.status) ? h('button', { class: 'secondary', onclick: (e) => act(e.target, g, 'cancelGeneration', 'Canceled; your credits are back.') }, 'Cancel') : null,
        g.status === 'FAILED' ? h('button', { class: 'secondary', onclick: (e) => act(e.target, g, 'retryGeneration', 'Queued again.') }, 'Retry') : null,
        h('button', { class: 'danger', onclick: (e) => remove(e.target, g) }, 'Delete'),
      ),
    );
    el.setAttribute('aria-label', `${g.kind === 'VIDEO' ? 'Video' : 'Image'}: ${g.prompt}`);
    return el;
  }

  function put(g, { prepend = false } = {}) {
    if (status && g.status !== status) {
      cards.get(g.id)?.remove();
      cards.delete(g.id);
      return;
    }
    upsert(list, cards, g.id, card(g), prepend);
  }

  async function act(button, g, mutation, message) {
    await busy(button, async () => {
      const d = await gql(`mutation Act($id: ID!) { ${mutation}(id: $id) { ${FIELDS} } }`, { id: g.id });
      put(d[mutation]);
      toast(message, 'success');
    }, explain);
  }

  async function remove(button, g) {
    if (!confirm('Delete this generation and its media?')) return;
    await busy(button, async () => {
      await gql(`mutation Delete($id: ID!) { deleteGeneration(id: $id) { id } }`, { id: g.id });
      cards.get(g.id)?.remove();
      cards.delete(g.id);
      toast('Deleted.', 'success');
    }, explain);
  }

  async function page() {
    if (loading || done) return;
    loading = true;
    fill(more, 'Loading…');
    try {
      const d = await gql(
        `query History($after: String, $status: GenerationStatus) { generations(first: 20, after: $after, status: $status) { pageInfo { hasNextPage endCursor } nodes { ${FIELDS} } } }`,
        { after, status: status || null },
      );
      d.generations.nodes.forEach((g) => put(g));
      after = d.generations.pageInfo.endCursor;
      done = !d.generations.pageInfo.hasNextPage;
      fill(more, done ? (cards.size ? 'That is everything.' : h('span', {}, 'Nothing here yet. ', h('a', { href: '/create', 'data-link': true }, 'Create something'))) : '');
    } catch (e) {
      fill(more, h('span', { class: 'error' }, explain(e)));
    } finally {
      loading = false;
    }
  }

  const observer = new IntersectionObserver((entries) => entries.some((e) => e.isIntersecting) && page(), { rootMargin: '400px' });
  await page();
  observer.observe(sentinel);
  const stop = subscribe(`subscription Mine { myGenerations { ${FIELDS} } }`, {}, (d) => {
    const g = d.myGenerations;
    put(g, { prepend: !cards.has(g.id) });
  });
  return () => {
    observer.disconnect();
    stop();
  };
}
