// The Node peer of bench/queries: `me { credits }` and `generations(first,
// after, status)` served by graphql-yoga + pg on Mage's own database, the
// way a Node team would write them: one process, one pg Pool, the same HS256
// access tokens Mage issues (claims `sub` = user id, `exp`, `iat`), the same
// SQL Mage runs (a user by id, then the user's credit account; a page of
// generations by `(created_at, id)` with one row more than asked to learn
// `hasNextPage`), and the same JSON: field names, enum values, Relay cursors
// (`base64url("gen:<created_at µs>_<id>")`) and absolute media URLs.
//
// No DataLoader: neither query has an N+1 (`me` loads one user and one
// account). Parsing and validation are cached by yoga's defaults.
//
// Environment: DATABASE_URL, MAGE_JWT_SECRET, PORT (default 4000), HOST
// (127.0.0.1), POOL_SIZE (16, Mage's MAGE_DB_POOL_SIZE default),
// PUBLIC_URL (base of the media URLs, as Mage's MAGE_PUBLIC_URL).

import { createServer } from 'node:http';
import { createSchema, createYoga } from 'graphql-yoga';
import { GraphQLError, GraphQLScalarType } from 'graphql';
import jwt from 'jsonwebtoken';
import pg from 'pg';

const port = Number(process.env.PORT ?? 4000);
const host = process.env.HOST ?? '127.0.0.1';
const secret = process.env.MAGE_JWT_SECRET;
if (!secret) throw new Error('MAGE_JWT_SECRET is required');
const publicUrl = (process.env.PUBLIC_URL ?? `http://${host}:${port}`).replace(/\/+$/, '');

// BIGINT columns (balance, held, cost, seed) as numbers, not strings.
pg.types.setTypeParser(20, (v) => parseInt(v, 10));
const pool = new pg.Pool({
  connectionString: process.env.DATABASE_URL,
  max: Number(process.env.POOL_SIZE ?? 16),
});

const typeDefs = /* GraphQL */ `
  scalar DateTime

  enum Role { USER ADMIN }
  enum ModelKind { IMAGE VIDEO }
  enum Resolution { R480P R720P R1080P }
  enum GenerationStatus { QUEUED RENDERING TRANSCODING SUCCEEDED FAILED CANCELED }

  type CreditAccount {
    balance: Int!
    held: Int!
  }

  type User {
    id: ID!
    email: String!
    role: Role!
    credits: CreditAccount!
    createdAt: DateTime!
  }

  type Rendition {
    name: String!
    width: Int!
    height: Int!
    bandwidth: Int!
  }

  type GenerationOutput {
    hlsUrl: String
    videoUrl: String
    imageUrl: String
    posterUrl: String
    width: Int!
    height: Int!
    durationSeconds: Float
    renditions: [Rendition!]!
  }

  type Generation {
    id: ID!
    status: GenerationStatus!
    progress: Int!
    stage: String
    model: String!
    kind: ModelKind!
    prompt: String!
    negativePrompt: String
    resolution: Resolution!
    durationSeconds: Int
    seed: Int
    cost: Int!
    error: String
    mediaExpiredAt: DateTime
    output: GenerationOutput
    attempts: Int!
    createdAt: DateTime!
    queuedAt: DateTime!
    startedAt: DateTime
    finishedAt: DateTime
  }

  type PageInfo {
    hasPreviousPage: Boolean!
    hasNextPage: Boolean!
    startCursor: String
    endCursor: String
  }

  type GenerationEdge {
    node: Generation!
    cursor: String!
  }

  type GenerationConnection {
    pageInfo: PageInfo!
    edges: [GenerationEdge!]!
    nodes: [Generation!]!
  }

  type Query {
    me: User
    generations(first: Int, after: String, status: GenerationStatus): GenerationConnection!
  }
`;

const unauthenticated = (message = 'sign in first') =>
  new GraphQLError(message, { extensions: { code: 'UNAUTHENTICATED' } });
const badInput = (message) => new GraphQLError(message, { extensions: { code: 'BAD_USER_INPUT' } });

function requireUser(ctx) {
  if (ctx.authError) throw unauthenticated(ctx.authError);
  if (!ctx.userId) throw unauthenticated();
  return ctx.userId;
}

const encodeCursor = (kind, value) => Buffer.from(`${kind}:${value}`).toString('base64url');

function decodeGenerationCursor(after) {
  if (after == null) return null;
  const raw = Buffer.from(after, 'base64url').toString('utf8');
  const m = /^gen:(-?\d+)_([0-9a-f-]{36})$/.exec(raw);
  if (!m) throw badInput('after is not a cursor this list returned');
  return { micros: m[1], id: m[2] };
}

// Media keys as Mage's local store publishes them.
const mediaUrl = (key) =>
  `${publicUrl}/media/${key.replace(/[^A-Za-z0-9/\-_.~]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase().padStart(2, '0')}`)}`;

const resolvers = {
  DateTime: new GraphQLScalarType({
    name: 'DateTime',
    serialize: (v) => (v instanceof Date ? v : new Date(v)).toISOString(),
  }),
  Role: { USER: 'user', ADMIN: 'admin' },
  ModelKind: { IMAGE: 'image', VIDEO: 'video' },
  Resolution: { R480P: '480p', R720P: '720p', R1080P: '1080p' },
  GenerationStatus: {
    QUEUED: 'queued',
    RENDERING: 'rendering',
    TRANSCODING: 'transcoding',
    SUCCEEDED: 'succeeded',
    FAILED: 'failed',
    CANCELED: 'canceled',
  },
  Query: {
    async me(_parent, _args, ctx) {
      if (ctx.authError) throw unauthenticated(ctx.authError);
      if (!ctx.userId) return null;
      const { rows } = await pool.query('SELECT * FROM users WHERE id = $1', [ctx.userId]);
      return rows[0] ?? null;
    },
    async generations(_parent, { first, after, status }, ctx) {
      const userId = requireUser(ctx);
      const limit = first ?? 20;
      if (limit < 0 || limit > 100) throw badInput('first must be between 0 and 100');
      const cursor = decodeGenerationCursor(after);
      const params = [userId];
      let where = 'user_id = $1';
      if (status) {
        params.push(status);
        where += ` AND status = $${params.length}`;
      }
      if (cursor) {
        params.push(cursor.micros, cursor.id);
        const at = `to_timestamp($${params.length - 1}::bigint / 1000000.0)`;
        where += ` AND (created_at < ${at} OR (created_at = ${at} AND id < $${params.length}))`;
      }
      params.push(limit + 1);
      const { rows } = await pool.query(
        `SELECT *, (extract(epoch FROM created_at) * 1000000)::bigint::text AS created_micros
           FROM generations WHERE ${where}
          ORDER BY created_at DESC, id DESC LIMIT $${params.length}`,
        params,
      );
      const hasNextPage = rows.length > limit;
      const page = rows.slice(0, limit);
      const edges = page.map((g) => ({ node: g, cursor: encodeCursor('gen', `${g.created_micros}_${g.id}`) }));
      return {
        edges,
        nodes: page,
        pageInfo: {
          hasPreviousPage: cursor != null,
          hasNextPage,
          startCursor: edges[0]?.cursor ?? null,
          endCursor: edges.at(-1)?.cursor ?? null,
        },
      };
    },
  },
  User: {
    async credits(user) {
      const { rows } = await pool.query('SELECT * FROM credit_accounts WHERE user_id = $1', [user.id]);
      if (!rows[0]) throw new GraphQLError('credit account not found', { extensions: { code: 'NOT_FOUND' } });
      return rows[0];
    },
    createdAt: (user) => user.created_at,
  },
  CreditAccount: {
    balance: (account) => account.balance - account.held,
  },
  Generation: {
    negativePrompt: (g) => g.negative_prompt,
    durationSeconds: (g) => g.duration_seconds,
    mediaExpiredAt: (g) => g.media_expired_at,
    createdAt: (g) => g.created_at,
    queuedAt: (g) => g.queued_at,
    startedAt: (g) => g.started_at,
    finishedAt: (g) => g.finished_at,
    output(g) {
      const out = g.output;
      if (g.status !== 'succeeded' || g.media_expired_at || !out) return null;
      const url = (field) => (typeof out[field] === 'string' ? mediaUrl(out[field]) : null);
      return {
        hlsUrl: url('hls'),
        videoUrl: url('video'),
        imageUrl: url('image'),
        posterUrl: url('poster'),
        width: out.width ?? 0,
        height: out.height ?? 0,
        durationSeconds: typeof out.durationSeconds === 'number' ? out.durationSeconds : null,
        renditions: (out.renditions ?? []).map((r) => ({
          name: r.name ?? '',
          width: r.width ?? 0,
          height: r.height ?? 0,
          bandwidth: r.bandwidth ?? 0,
        })),
      };
    },
  },
};

const yoga = createYoga({
  schema: createSchema({ typeDefs, resolvers }),
  graphiql: false,
  // The caller, from `Authorization: Bearer <token>` (a bare token too, as
  // Mage accepts); bad credentials fail the fields that need a user.
  context({ request }) {
    const header = request.headers.get('authorization')?.trim();
    if (!header) return { userId: null };
    const [scheme, rest] = header.includes(' ') ? header.split(/\s+/, 2) : ['bearer', header];
    if (scheme.toLowerCase() !== 'bearer') return { userId: null, authError: 'unsupported Authorization scheme' };
    try {
      const claims = jwt.verify(rest, secret, { algorithms: ['HS256'], clockTolerance: 30 });
      return { userId: claims.sub };
    } catch (e) {
      return {
        userId: null,
        authError: e instanceof jwt.TokenExpiredError ? 'the access token has expired' : 'the access token is not valid',
      };
    }
  },
});

const server = createServer(yoga);
server.listen(port, host, () => {
  console.log(`yoga listening on http://${host}:${port}${yoga.graphqlEndpoint}`);
});
const stop = () => server.close(() => pool.end().then(() => process.exit(0)));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
