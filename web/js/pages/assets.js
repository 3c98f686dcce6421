// Your uploads: add one, see it processed, play videos as HLS, delete.
import { gql, explain } from '../api.js';
import { h, fill, busy, toast, when, bytes, statusBadge, playHls, duration, upsert } from '../ui.js';
import { upload, untilProcessed, uploadLimits } from './create.js';

const FIELDS = 'id kind status filename contentType byteSize width height durationSeconds error url thumbnailUrl posterUrl hlsUrl createdAt';

export default async function assets(main, ctx) {
  const limits = await uploadLimits();
  const stops = [];
  const list = h('div', { class: 'grid', id: 'assets' });
  const more = h('div', { class: 'row' });
  const file = h('input', { type: 'file', id: 'asset-file', accept: limits.contentTypes.join(',') });
  const status = h('p', { role: 'status', class: 'muted', id: 'asset-status' });
  const bar = h('progress', { max: 100, value: 0, hidden: true, 'aria-label': 'Upload progress' });
  fill(
    main,
    h('h1', {}, 'Uploads'),
    h('div', { class: 'card' },
      h('label', { for: 'asset-file', class: 'label' }, 'Upload an image or a video'),
      h('p', { class: 'muted' }, `Images up to ${bytes(limits.maxImageBytes)}, videos up to ${bytes(limits.maxVideoBytes)}. Videos are made streamable (HLS).`),
      file, bar, status),
    h('h2', {}, 'Your uploads'),
    list,
    more,
  );
  const cards = new Map();

  function card(a) {
    const preview =
      a.status === 'READY' && a.kind === 'VIDEO' && a.hlsUrl
        ? h('button', { class: 'secondary', onclick: (e) => play(e.target, a) }, 'Play')
        : null;
    const el = h(
      'article',
      { class: 'card', dataset: { id: a.id, status: a.status } },
      a.thumbnailUrl || a.posterUrl ? h('img', { class: 'thumb', src: a.thumbnailUrl || a.posterUrl, alt: '', loading: 'lazy' }) : h('div', { class: 'thumb', 'aria-hidden': 'true' }),
      h('h3', { class: 'title' }, a.filename),
      h('p', { class: 'row' }, statusBadge(a.status), h('span', { class: 'muted' }, [bytes(a.byteSize), a.width ? `${a.width}×${a.height}` : null, a.durationSeconds ? duration(a.durationSeconds) : null].filter(Boolean).join(' · '))),
      a.error ? h('p', { class: 'error' }, a.error) : null,
      h('p', { class: 'muted' }, when(a.createdAt)),
      h('div', { class: 'row' }, preview, h('button', { class: 'danger', onclick: (e) => remove(e.target, a) }, 'Delete')),
    );
    return el;
  }

  const put = (a, prepend) => upsert(list, cards, a.id, card(a), prepend);

  async function play(button, a) {
    const video = h('video', { class: 'media', controls: true, playsInline: true, poster: a.posterUrl || undefined, 'aria-label': `Video: ${a.filename}` });
    button.replaceWith(video);
    await playHls(video, a.hlsUrl);
    video.play().catch(() => {});
  }

  async function remove(button, a) {
    if (!confirm(`Delete ${a.filename}?`)) return;
    await busy(button, async () => {
      await gql(`mutation DeleteAsset($id: ID!) { deleteAsset(id: $id) { id } }`, { id: a.id });
      cards.get(a.id)?.remove();
      cards.delete(a.id);
      toast('Deleted.', 'success');
    }, explain);
  }

  file.addEventListener('change', async () => {
    const f = file.files[0];
    if (!f) return;
    const max = f.type.startsWith('video/') ? limits.maxVideoBytes : limits.maxImageBytes;
    if (!limits.contentTypes.includes(f.type)) return fill(status, h('span', { class: 'error' }, `${f.name} is ${f.type || 'of an unknown type'}; choose one of ${limits.contentTypes.join(', ')}.`));
    if (f.size > max) return fill(status, h('span', { class: 'error' }, `${f.name} is ${bytes(f.size)}; the limit is ${bytes(max)}.`));
    file.disabled = true;
    try {
      const a = await upload(f, (pct) => {
        bar.hidden = false;
        bar.value = pct;
        fill(status, `Uploading ${f.name}: ${pct}%`);
      });
      put(a, true);
      fill(status, `Processing ${f.name}…`);
      const done = await untilProcessed(a.id, stops);
      put(done);
      fill(status, done.status === 'READY' ? h('span', { class: 'ok' }, `${f.name} is ready.`) : h('span', { class: 'error' }, `${f.name} was refused: ${done.error}`));
    } catch (e) {
      fill(status, h('span', { class: 'error' }, explain(e)));
    } finally {
      bar.hidden = true;
      file.disabled = false;
      file.value = '';
    }
  });

  let after = null;
  async function page() {
    const d = await gql(`query Assets($after: String) { assets(first: 24, after: $after) { pageInfo { hasNextPage endCursor } nodes { ${FIELDS} } } }`, { after });
    d.assets.nodes.forEach((a) => put(a));
    after = d.assets.pageInfo.endCursor;
    fill(more, d.assets.pageInfo.hasNextPage ? h('button', { class: 'secondary', onclick: (e) => busy(e.target, page, explain) }, 'Show more') : cards.size ? null : h('p', { class: 'muted' }, 'No uploads yet.'));
  }
  await page();
  return () => stops.forEach((s) => s());
}
