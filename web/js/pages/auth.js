// Sign up, sign in, password reset and email verification.
import { gql, AUTH_FIELDS, explain } from '../api.js';
import { h, fill, field, busy, toast } from '../ui.js';

export default async function auth(main, ctx) {
  const next = ctx.query.get('next');
  const safeNext = next && next.startsWith('/') && !next.startsWith('//') ? next : null;
  switch (ctx.variant) {
    case 'signup':
      return credentialsForm(main, ctx, 'signup', safeNext);
    case 'forgot':
      return forgot(main);
    case 'reset':
      return reset(main, ctx);
    case 'verify':
      return verify(main, ctx);
    default:
      return credentialsForm(main, ctx, 'signin', safeNext);
  }
}

function credentialsForm(main, ctx, mode, next) {
  const signup = mode === 'signup';
  const email = h('input', { type: 'email', name: 'email', autocomplete: 'email', required: true });
  const password = h('input', {
    type: 'password',
    name: 'password',
    autocomplete: signup ? 'new-password' : 'current-password',
    required: true,
    minLength: signup ? 8 : undefined,
  });
  const submit = h('button', { type: 'submit', id: signup ? 'signup' : 'signin' }, signup ? 'Create account' : 'Sign in');
  const error = h('p', { class: 'error', role: 'alert' });
  const form = h(
    'form',
    {
      class: 'card',
      onsubmit: (e) => {
        e.preventDefault();
        fill(error);
        busy(submit, async () => {
          try {
            const op = signup ? 'register' : 'login';
            const d = await gql(
              `mutation Auth($email: String!, $password: String!) { ${op}(email: $email, password: $password) { ${AUTH_FIELDS} } }`,
              { email: email.value.trim(), password: password.value },
            );
            if (signup) toast('Welcome to Mage! We sent you a link to confirm your email address.', 'success');
            await ctx.signedIn(d[op], next);
          } catch (err) {
            fill(error, explain(err));
          }
        });
      },
    },
    field('Email', email),
    field('Password', password, signup ? 'At least 8 characters.' : null),
    error,
    h('div', { class: 'row' }, submit),
  );
  fill(
    main,
    h(
      'div',
      { class: 'narrow' },
      h('h1', {}, signup ? 'Create your Mage account' : 'Sign in to Mage'),
      form,
      h(
        'p',
        {},
        signup
          ? ['Already have an account? ', h('a', { href: '/signin', 'data-link': true }, 'Sign in')]
          : [
              'New here? ',
              h('a', { href: '/signup', 'data-link': true }, 'Create an account'),
              ' · ',
              h('a', { href: '/forgot-password', 'data-link': true }, 'Forgot your password?'),
            ],
      ),
    ),
  );
}

function forgot(main) {
  const email = h('input', { type: 'email', autocomplete: 'email', required: true });
  const submit = h('button', { type: 'submit' }, 'Send reset link');
  const out = h('p', { role: 'status' });
  fill(
    main,
    h(
      'div',
      { class: 'narrow' },
      h('h1', {}, 'Reset your password'),
      h(
        'form',
        {
          class: 'card',
          onsubmit: (e) => {
            e.preventDefault();
            busy(
              submit,
              async () => {
                await gql(`mutation Forgot($email: String!) { requestPasswordReset(email: $email) }`, { email: email.value.trim() });
                fill(out, 'If an account has this address, a link to reset its password is on its way. It works for 30 minutes.');
              },
              explain,
            );
          },
        },
        field('Email', email),
        h('div', { class: 'row' }, submit),
        out,
      ),
      h('p', {}, h('a', { href: '/signin', 'data-link': true }, 'Back to sign in')),
    ),
  );
}

function reset(main, ctx) {
  const token = ctx.query.get('token') || '';
  const password = h('input', { type: 'password', autocomplete: 'new-password', required: true, minLength: 8 });
  const submit = h('button', { type: 'submit' }, 'Set new password');
  const error = h('p', { class: 'error', role: 'alert' });
  fill(
    main,
    h(
      'div',
      { class: 'narrow' },
      h('h1', {}, 'Choose a new password'),
      h(
        'form',
        {
          class: 'card',
          onsubmit: (e) => {
            e.preventDefault();
            busy(submit, async () => {
              try {
                const d = await gql(
                  `mutation Reset($token: String!, $password: String!) { resetPassword(token: $token, newPassword: $password) { ${AUTH_FIELDS} } }`,
                  { token, password: password.value },
                );
                toast('Your password is changed. Every other device was signed out.', 'success');
                await ctx.signedIn(d.resetPassword);
              } catch (err) {
                fill(error, explain(err));
              }
            });
          },
        },
        field('New password', password, '8 to 128 characters.'),
        error,
        h('div', { class: 'row' }, submit),
      ),
    ),
  );
}

async function verify(main, ctx) {
  const status = h('p', { role: 'status' }, 'Confirming your email address…');
  fill(main, h('div', { class: 'narrow' }, h('h1', {}, 'Email confirmation'), status));
  try {
    const d = await gql(`mutation Verify($token: String!) { verifyEmail(token: $token) { email emailVerified } }`, {
      token: ctx.query.get('token') || '',
    });
    fill(status, `Thank you: ${d.verifyEmail.email} is confirmed. `, h('a', { href: '/', 'data-link': true }, 'Continue to Mage'));
    if (ctx.me) ctx.refreshMe();
  } catch (err) {
    fill(status, h('span', { class: 'error' }, explain(err)));
  }
}
