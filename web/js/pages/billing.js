// Buying credits: products → checkout (Stripe, or the development checkout
// page) → back here to a confirmation with the new balance. Credits arrive
// when the payment is confirmed, so the confirmation waits for that.
import { gql, explain } from '../api.js';
import { h, fill, busy, credits, money, when, statusBadge } from '../ui.js';

const ORDER = 'id status totalCents currency credits failureReason createdAt paidAt items { productName quantity }';

export default async function billing(main, ctx) {
  if (ctx.variant === 'success') return confirmation(main, ctx);
  if (ctx.variant === 'canceled') {
    fill(main, h('h1', {}, 'Checkout canceled'), h('p', {}, 'Nothing was charged. '), h('p', {}, h('a', { href: '/billing', 'data-link': true, class: 'button' }, 'Back to billing')));
    return null;
  }
  const { products, orders, creditEntries } = await gql(`query Billing {
    products { id kind name credits priceCents currency }
    orders(first: 10) { nodes { ${ORDER} } }
    creditEntries(first: 15) { nodes { id kind amount balanceAfter memo createdAt } }
  }`);
  const a = ctx.account();
  fill(
    main,
    h('h1', {}, 'Billing'),
    h('p', {}, a ? ['You have ', h('strong', { id: 'available' }, credits(a.balance - a.held)), a.held ? ` available (${credits(a.held)} held for generations in progress).` : ' available.'] : null),
    h('h2', {}, 'Buy credits'),
    h(
      'div',
      { class: 'grid', id: 'products' },
      products.length
        ? products.map((p) =>
            h(
              'article',
              { class: 'card', dataset: { product: p.id } },
              h('h3', { class: 'title' }, p.name),
              h('p', { class: 'quote' }, credits(p.credits), p.kind === 'PLAN' ? ' a month' : ''),
              h('p', {}, money(p.priceCents, p.currency), p.kind === 'PLAN' ? ' per month' : ''),
              h('button', { onclick: (e) => buy(e.target, p), 'aria-label': `${p.kind === 'PLAN' ? 'Subscribe to' : 'Buy'} ${p.name}` }, p.kind === 'PLAN' ? 'Subscribe' : 'Buy'),
            ),
          )
        : h('p', { class: 'muted' }, 'Nothing is on sale right now.'),
    ),
    h('h2', {}, 'Orders'),
    orders.nodes.length
      ? h('div', { class: 'scroll' }, h('table', {},
          h('thead', {}, h('tr', {}, ['Date', 'Items', 'Total', 'Credits', 'Status'].map((t) => h('th', { scope: 'col' }, t)))),
          h('tbody', {}, orders.nodes.map((o) => h('tr', {},
            h('td', {}, when(o.createdAt)),
            h('td', {}, o.items.map((i) => `${i.quantity} × ${i.productName}`).join(', ')),
            h('td', {}, money(o.totalCents, o.currency)),
            h('td', {}, o.credits),
            h('td', {}, statusBadge(o.status), o.failureReason ? h('div', { class: 'muted' }, o.failureReason) : null),
          )))))
      : h('p', { class: 'muted' }, 'No orders yet.'),
    h('h2', {}, 'Credit history'),
    h('div', { class: 'scroll' }, h('table', {},
      h('thead', {}, h('tr', {}, ['Date', 'What', 'Change', 'Balance after'].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, creditEntries.nodes.map((e) => h('tr', {},
        h('td', {}, when(e.createdAt)),
        h('td', {}, e.kind.toLowerCase(), e.memo ? h('span', { class: 'muted' }, ` · ${e.memo}`) : null),
        h('td', {}, e.amount > 0 ? `+${e.amount}` : e.amount),
        h('td', {}, e.balanceAfter),
      ))))),
  );

  async function buy(button, p) {
    await busy(button, async () => {
      const d = await gql(`mutation Checkout($id: ID!) { createCheckout(productId: $id) { url order { id } } }`, { id: p.id });
      location.assign(d.createCheckout.url);
    }, explain);
  }
  return null;
}

async function confirmation(main, ctx) {
  const id = ctx.query.get('order');
  const status = h('div', { role: 'status', 'aria-live': 'polite', id: 'confirmation' }, h('p', {}, 'Confirming your payment…'));
  fill(main, h('h1', {}, 'Thank you'), status, h('p', {}, h('a', { href: '/create', 'data-link': true, class: 'button' }, 'Start creating')));
  let stopped = false;
  // The return from the checkout page proves nothing: the order is paid
  // when Mage has the provider's confirmation, which may take a moment.
  for (let i = 0; i < 60 && !stopped; i++) {
    let order;
    try {
      order = (await gql(`query Order($id: ID!) { order(id: $id) { ${ORDER} } }`, { id })).order;
    } catch (e) {
      fill(status, h('p', { class: 'error' }, explain(e)));
      return null;
    }
    if (!order) {
      fill(status, h('p', { class: 'error' }, 'This order is not yours or does not exist.'));
      return null;
    }
    if (order.status === 'PAID') {
      await ctx.refreshMe();
      const a = ctx.account();
      fill(
        status,
        h('p', { class: 'ok', id: 'paid' }, `Paid: ${credits(order.credits)} added to your account.`),
        a ? h('p', {}, 'Your balance is now ', h('strong', { id: 'new-balance' }, credits(a.balance - a.held)), '.') : null,
      );
      return null;
    }
    if (order.status !== 'PENDING') {
      fill(status, h('p', { class: 'error' }, `The payment did not go through (${order.status.toLowerCase()})${order.failureReason ? `: ${order.failureReason}` : ''}.`));
      return null;
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
  if (!stopped) fill(status, h('p', {}, 'The payment is still being confirmed. Your credits will appear as soon as it is; you can leave this page.'));
  return () => (stopped = true);
}
