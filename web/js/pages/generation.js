// One generation, live: queue position, ETA, stage and progress from
// `generationUpdated`, then the player and a download.
import { gql, subscribe, explain } from '../api.js';
import { h, fill, busy, toast, credits, resolution, when, duration, statusBadge, playHls } from '../ui.js';

export const GENERATION_FIELDS = `id status progress stage queuePosition etaSeconds model kind prompt negativePrompt resolution
  durationSeconds seed cost error mediaExpiredAt attempts createdAt startedAt finishedAt
  output { hlsUrl videoUrl imageUrl posterUrl width height durationSeconds }
  inputs { id kind filename thumbnailUrl url }`;

const ACTIVE = ['QUEUED', 'RENDERING', 'TRANSCODING'];

export default async function generation(main, ctx) {
  const { generation: g } = await gql(`query Generation($id: ID!) { generation(id: $id) { ${GENERATION_FIELDS} } }`, { id: ctx.params.id });
  if (!g) {
    fill(main, h('h1', {}, 'Generation not found'), h('p', {}, h('a', { href: '/history', 'data-link': true }, 'See your history')));
    return null;
  }
  const title = h('h1', {}, g.kind === 'VIDEO' ? 'Video' : 'Image');
  const live = h('div', { class: 'card', id: 'live' });
  const player = h('div', { id: 'player' });
  const details = h('div', { class: 'card' });
  const actions = h('div', { class: 'row', id: 'actions' });
  fill(main, title, h('div', { class: 'cols' }, h('div', {}, player, live), h('div', {}, details, h('p'), actions)));

  let shownOutput = null;
  function show(g) {
    main.dataset.status = g.status;
    const active = ACTIVE.includes(g.status);
    const bits = [];
    if (g.status === 'QUEUED') {
      bits.push(h('p', { id: 'position' }, g.queuePosition ? `Position ${g.queuePosition} in the queue` : 'In the queue'));
      if (g.etaSeconds != null) bits.push(h('p', { class: 'muted', id: 'eta' }, `Starts in about ${duration(g.etaSeconds)}`));
    } else if (active) {
      bits.push(h('p', { id: 'stage' }, g.stage ? `${g.stage[0].toUpperCase()}${g.stage.slice(1)}…` : 'Working…'));
      if (g.etaSeconds != null) bits.push(h('p', { class: 'muted', id: 'eta' }, `About ${duration(g.etaSeconds)} left`));
    }
    fill(
      live,
      h('div', { class: 'row' }, statusBadge(g.status), h('span', { class: 'muted' }, `${g.progress}%`)),
      active || g.status === 'SUCCEEDED'
        ? h('progress', { id: 'progress', max: 100, value: g.progress, 'aria-label': 'Progress', 'aria-valuetext': `${g.progress} percent${g.stage ? `, ${g.stage}` : ''}` })
        : null,
      h('div', { role: 'status', 'aria-live': 'polite' }, bits),
      g.status === 'FAILED' ? h('p', { class: 'error' }, g.error || 'The render failed. Your credits were given back.') : null,
      g.status === 'CANCELED' ? h('p', { class: 'muted' }, 'Canceled. Your credits were given back.') : null,
    );
    if (g.status === 'SUCCEEDED' && g.output && shownOutput !== g.output) {
      shownOutput = g.output;
      showOutput(g);
    } else if (g.status === 'SUCCEEDED' && g.mediaExpiredAt) {
      fill(player, h('p', { class: 'muted' }, 'This media has expired and was deleted.'));
    }
    fill(
      details,
      h('p', {}, g.prompt),
      g.negativePrompt ? h('p', { class: 'muted' }, `Avoiding: ${g.negativePrompt}`) : null,
      h('dl', {},
        h('dt', {}, 'Model'), h('dd', {}, g.model),
        h('dt', {}, 'Resolution'), h('dd', {}, resolution(g.resolution)),
        g.durationSeconds ? [h('dt', {}, 'Duration'), h('dd', {}, `${g.durationSeconds} s`)] : null,
        h('dt', {}, 'Cost'), h('dd', {}, credits(g.cost)),
        h('dt', {}, 'Created'), h('dd', {}, when(g.createdAt)),
      ),
      g.inputs.length ? h('p', { class: 'muted' }, `From ${g.inputs.map((a) => a.filename).join(', ')}`) : null,
    );
    fill(
      actions,
      active ? h('button', { class: 'secondary', id: 'cancel', onclick: (e) => act(e.target, 'cancelGeneration', 'Canceled; your credits are back.') }, 'Cancel') : null,
      g.status === 'FAILED' ? h('button', { id: 'retry', onclick: (e) => act(e.target, 'retryGeneration', 'Queued again.') }, 'Try again') : null,
      h('button', { class: 'danger', id: 'delete', onclick: (e) => remove(e.target) }, 'Delete'),
      h('a', { href: `/create?model=${encodeURIComponent(g.model)}`, 'data-link': true, class: 'button secondary' }, 'Make another'),
    );
  }

  async function showOutput(g) {
    const o = g.output;
    const download = o.videoUrl || o.imageUrl;
    if (g.kind === 'VIDEO') {
      const video = h('video', { class: 'media', id: 'video', controls: true, playsInline: true, poster: o.posterUrl || undefined, 'aria-label': `Video: ${g.prompt}` });
      fill(player, video);
      if (o.hlsUrl) await playHls(video, o.hlsUrl);
      else if (o.videoUrl) video.src = o.videoUrl;
    } else {
      fill(player, h('img', { class: 'media', id: 'image', src: o.imageUrl, alt: g.prompt }));
    }
    if (download) player.append(h('p', {}, h('a', { href: download, download: '', id: 'download' }, g.kind === 'VIDEO' ? 'Download the video (MP4)' : 'Download the image')));
  }

  async function act(button, mutation, done) {
    await busy(button, async () => {
      const d = await gql(`mutation Act($id: ID!) { ${mutation}(id: $id) { ${GENERATION_FIELDS} } }`, { id: g.id });
      show(d[mutation]);
      toast(done, 'success');
      if (mutation === 'retryGeneration') follow();
    }, explain);
  }

  async function remove(button) {
    if (!confirm('Delete this generation and its media?')) return;
    await busy(button, async () => {
      await gql(`mutation Delete($id: ID!) { deleteGeneration(id: $id) { id } }`, { id: g.id });
      toast('Deleted.', 'success');
      ctx.navigate('/history');
    }, explain);
  }

  let stop = null;
  function follow() {
    stop?.();
    stop = subscribe(
      `subscription Updated($id: ID!) { generationUpdated(id: $id) { ${GENERATION_FIELDS} } }`,
      { id: g.id },
      (d) => show(d.generationUpdated),
      (e) => toast(explain(e), 'error'),
    );
  }
  show(g);
  if (ACTIVE.includes(g.status)) follow();
  return () => {
    stop?.();
    player.querySelector('video')?.hls?.destroy();
  };
}
