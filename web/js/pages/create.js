// Create: a model, its inputs (uploaded here), the prompt and settings, the
// live price, then the generation's own page.
import { gql, subscribe, explain } from '../api.js';
import { h, fill, field, busy, credits, resolution, bytes, idempotencyKey } from '../ui.js';

const ASSET_FIELDS = 'id kind status filename contentType byteSize width height durationSeconds error url thumbnailUrl posterUrl hlsUrl';

export default async function create(main, ctx) {
  const [models, limits] = await Promise.all([ctx.models(), uploadLimits()]);
  const stops = [];
  const chosen = new Map(); // input slot → ready asset

  const model = h('select', { name: 'model', id: 'model' }, models.map((m) =>
    h('option', { value: m.id }, `${m.name} (${m.kind === 'VIDEO' ? 'video' : 'image'}${m.inputs.length ? ` from ${m.inputs.map((k) => k.toLowerCase()).join(' + ')}` : ''})`),
  ));
  const wanted = ctx.query.get('model');
  if (wanted && models.some((m) => m.id === wanted)) model.value = wanted;
  const prompt = h('textarea', { name: 'prompt', id: 'prompt', required: true, maxLength: 2000, placeholder: 'A lighthouse at dusk, waves rolling in' });
  const negative = h('input', { name: 'negative', id: 'negative', placeholder: 'blurry, text' });
  const res = h('select', { name: 'resolution', id: 'resolution' });
  const dur = h('input', { type: 'number', id: 'duration', name: 'duration', min: 1, step: 1 });
  const durField = field('Duration (seconds)', dur);
  const inputsBox = h('div', { id: 'inputs' });
  const quote = h('p', { class: 'quote', id: 'quote', 'aria-live': 'polite' }, '…');
  const submit = h('button', { type: 'submit', id: 'generate' }, 'Generate');
  const problem = h('p', { class: 'error', role: 'alert' });

  const current = () => models.find((m) => m.id === model.value);

  function input() {
    const m = current();
    const i = {
      model: m.id,
      // The price does not depend on the words; a quote needs some.
      prompt: prompt.value.trim() || 'price',
      resolution: res.value,
    };
    if (negative.value.trim()) i.negativePrompt = negative.value.trim();
    if (m.kind === 'VIDEO' && dur.value) i.durationSeconds = Number(dur.value);
    if (m.inputs.length) i.inputs = m.inputs.map((_, slot) => chosen.get(slot)?.id).filter(Boolean);
    return i;
  }

  let quoting = 0;
  async function requote() {
    const mine = ++quoting;
    try {
      const d = await gql(`query Quote($input: CreateGenerationInput!) { quote(input: $input) }`, { input: input() });
      if (mine !== quoting) return;
      const a = ctx.account();
      const short = a && a.balance - a.held < d.quote;
      fill(quote, `Costs ${credits(d.quote)}`, short ? h('span', { class: 'error' }, ` · you have ${credits(a.balance - a.held)}`) : null);
      quote.dataset.credits = d.quote;
    } catch (e) {
      if (mine === quoting) fill(quote, h('span', { class: 'error' }, explain(e)));
    }
  }

  function onModel() {
    const m = current();
    const keep = res.value;
    fill(res, m.resolutions.map((r) => h('option', { value: r }, resolution(r))));
    if (m.resolutions.includes(keep)) res.value = keep;
    durField.hidden = m.kind !== 'VIDEO';
    if (m.kind === 'VIDEO') {
      dur.max = m.maxDurationSeconds || 10;
      dur.value = Math.min(Number(dur.value) || m.defaultDurationSeconds || 5, dur.max);
      dur.nextElementSibling?.remove();
      durField.append(h('small', {}, `Up to ${m.maxDurationSeconds} seconds.`));
    }
    chosen.clear();
    fill(inputsBox, m.inputs.map((kind, slot) => dropZone(kind, slot)));
    requote();
  }

  /** Drag-and-drop (or click) upload of one input, checked before it is sent. */
  function dropZone(kind, slot) {
    const accept = limits.contentTypes.filter((t) => t.startsWith(kind === 'IMAGE' ? 'image/' : 'video/'));
    const max = kind === 'IMAGE' ? limits.maxImageBytes : limits.maxVideoBytes;
    const file = h('input', { type: 'file', accept: accept.join(','), class: 'visually-hidden', id: `file-${slot}` });
    const status = h('p', { class: 'muted', 'aria-live': 'polite', id: `upload-status-${slot}` }, `${accept.map((t) => t.split('/')[1].toUpperCase()).join(', ')}, up to ${bytes(max)}.`);
    const bar = h('progress', { max: 100, value: 0, hidden: true, 'aria-label': 'Upload progress', id: `upload-progress-${slot}` });
    const preview = h('div');
    // A label around the (visually hidden) input: clicking anywhere opens
    // the file dialog, the input keeps the keyboard focus and its name.
    const zone = h(
      'label',
      {
        class: 'drop',
        ondragover: (e) => (e.preventDefault(), zone.classList.add('over')),
        ondragleave: () => zone.classList.remove('over'),
        ondrop: (e) => {
          e.preventDefault();
          zone.classList.remove('over');
          if (e.dataTransfer.files[0]) take(e.dataTransfer.files[0]);
        },
      },
      h('strong', {}, kind === 'IMAGE' ? 'Drop an image here or click to choose' : 'Drop a video here or click to choose'),
      file,
      preview,
    );
    file.addEventListener('change', () => file.files[0] && take(file.files[0]));

    async function take(f) {
      chosen.delete(slot);
      if (!accept.includes(f.type)) {
        fill(status, h('span', { class: 'error' }, `${f.name} is ${f.type || 'of an unknown type'}; choose ${accept.join(', ')}.`));
        return;
      }
      if (f.size > max) {
        fill(status, h('span', { class: 'error' }, `${f.name} is ${bytes(f.size)}; the limit is ${bytes(max)}.`));
        return;
      }
      const local = URL.createObjectURL(f);
      fill(preview, kind === 'IMAGE' ? h('img', { src: local, alt: `Preview of ${f.name}` }) : h('video', { src: local, muted: true, class: 'thumb', 'aria-label': `Preview of ${f.name}` }));
      try {
        const asset = await upload(f, (pct) => {
          bar.hidden = false;
          bar.value = pct;
          fill(status, `Uploading ${f.name}: ${pct}%`);
        });
        fill(status, `Checking ${f.name}…`);
        const ready = await untilProcessed(asset.id, stops);
        bar.hidden = true;
        if (ready.status === 'READY') {
          chosen.set(slot, ready);
          fill(status, h('span', { class: 'ok' }, `${f.name} is ready${ready.width ? ` (${ready.width}×${ready.height})` : ''}.`));
          status.dataset.ready = ready.id;
          requote();
        } else {
          fill(status, h('span', { class: 'error' }, `${f.name} was refused: ${ready.error || 'unreadable'}.`));
        }
      } catch (e) {
        bar.hidden = true;
        fill(status, h('span', { class: 'error' }, explain(e)));
      }
    }
    file.setAttribute('aria-describedby', status.id);
    return h('div', { class: 'field' }, h('span', { class: 'label' }, kind === 'IMAGE' ? 'Start from an image' : 'Start from a video'), zone, bar, status);
  }

  model.addEventListener('change', onModel);
  for (const el of [res, dur, negative]) el.addEventListener('change', requote);
  let timer;
  prompt.addEventListener('input', () => (clearTimeout(timer), (timer = setTimeout(requote, 400))));

  let pending = null;
  const form = h(
    'form',
    {
      class: 'card',
      onsubmit: (e) => {
        e.preventDefault();
        fill(problem);
        const m = current();
        if (!prompt.value.trim()) return fill(problem, 'Describe what to make.');
        if (m.inputs.some((_, slot) => !chosen.get(slot))) return fill(problem, 'Add the image first and wait until it is ready.');
        // The same input sent again (a retry after a lost answer) reuses
        // its key, so it is created, and its price held, once.
        const body = input();
        const fingerprint = JSON.stringify(body);
        if (pending?.fingerprint !== fingerprint) pending = { fingerprint, key: idempotencyKey() };
        busy(submit, async () => {
          try {
            const d = await gql(`mutation Create($input: CreateGenerationInput!) { createGeneration(input: $input) { id } }`, {
              input: { ...body, idempotencyKey: pending.key },
            });
            pending = null;
            ctx.navigate(`/generations/${d.createGeneration.id}`);
          } catch (err) {
            if (err.code === 'INSUFFICIENT_CREDITS') {
              fill(problem, explain(err), ' ', h('a', { href: '/billing', 'data-link': true }, 'Buy credits'));
            } else {
              fill(problem, explain(err));
            }
          }
        });
      },
    },
    field('Model', model),
    inputsBox,
    field('Prompt', prompt),
    field('Avoid (optional)', negative),
    h('div', { class: 'row' }, h('div', { class: 'grow' }, field('Resolution', res)), h('div', { class: 'grow' }, durField)),
    quote,
    problem,
    h('div', { class: 'row' }, submit),
  );
  fill(main, h('h1', {}, 'Create'), form);
  onModel();
  const onCredits = () => requote();
  document.addEventListener('mage:credits', onCredits);
  return () => {
    document.removeEventListener('mage:credits', onCredits);
    stops.forEach((s) => s());
  };
}

/** The types and sizes `createUpload` accepts here. */
export async function uploadLimits() {
  return (await gql(`query UploadLimits { uploadLimits { contentTypes maxImageBytes maxVideoBytes } }`)).uploadLimits;
}

/** createUpload → PUT the bytes with progress → completeUpload. */
export async function upload(file, onProgress) {
  const d = await gql(
    `mutation Upload($input: CreateUploadInput!) { createUpload(input: $input) { asset { id } url method headers { name value } } }`,
    { input: { filename: file.name, contentType: file.type, byteSize: file.size } },
  );
  const target = d.createUpload;
  await new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open(target.method, target.url);
    for (const { name, value } of target.headers) xhr.setRequestHeader(name, value);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(Math.round((e.loaded / e.total) * 100));
    xhr.onload = () => (xhr.status < 300 ? resolve() : reject(Object.assign(new Error(`The upload was refused (${xhr.status}).`), { code: 'UPLOAD' })));
    xhr.onerror = () => reject(Object.assign(new Error('The upload was interrupted. Check your connection and try again.'), { code: 'UPLOAD' }));
    xhr.send(file);
  });
  onProgress(100);
  const done = await gql(`mutation Complete($id: ID!) { completeUpload(id: $id) { ${ASSET_FIELDS} } }`, { id: target.asset.id });
  return done.completeUpload;
}

/** Follows an asset until it is READY or REJECTED. */
export function untilProcessed(id, stops) {
  return new Promise((resolve, reject) => {
    let last;
    const stop = subscribe(
      `subscription Asset($id: ID!) { assetUpdated(id: $id) { ${ASSET_FIELDS} } }`,
      { id },
      (d) => {
        last = d.assetUpdated;
        if (last.status === 'READY' || last.status === 'REJECTED') resolve(last);
      },
      reject,
      () => (last ? resolve(last) : reject(new Error('The upload could not be followed.'))),
    );
    stops.push(stop);
  });
}

