// The peer of bench/subscriptions: what a Node team would write instead of
// Mage's live layer. graphql-ws on `ws`, a graphql-js schema with the same
// `generationUpdated(id: ID!): Generation!` subscription and Generation type
// (same field names, enums and nullability as Mage's schema.graphql), fed by
// the Redis channels Mage's workers publish to: one ioredis pub/sub
// connection for the process, subscribed to a channel with its first
// subscriber and unsubscribed after its last, each message parsed once and
// pushed to every subscriber's queue. Like Mage, a subscription checks the
// access token (HS256, MAGE_JWT_SECRET) given in `connection_init`, reads
// the generation (and its queue position while QUEUED) from PostgreSQL
// first, sends that, then every change, and ends after a final state.
//
// Environment: DATABASE_URL, REDIS_URL, MAGE_REDIS_PREFIX, MAGE_JWT_SECRET,
// PEER_ADDR (host:port), MAGE_DB_POOL_SIZE (16, as Mage's default).
// GET /healthz answers 200 once Redis and PostgreSQL answer.

import http from 'node:http';
import { WebSocketServer } from 'ws';
import { useServer } from 'graphql-ws/use/ws';
import { buildSchema, GraphQLError } from 'graphql';
import Redis from 'ioredis';
import pg from 'pg';
import jwt from 'jsonwebtoken';

const env = (k, d) => process.env[k] ?? d;
const prefix = env('MAGE_REDIS_PREFIX', 'mage:');
const secret = env('MAGE_JWT_SECRET');
if (!secret) throw new Error('MAGE_JWT_SECRET is required');
const [host, port] = env('PEER_ADDR', '127.0.0.1:4000').split(':');
const pool = new pg.Pool({ connectionString: env('DATABASE_URL'), max: Number(env('MAGE_DB_POOL_SIZE', '16')) });
const redis = new Redis(env('REDIS_URL', 'redis://127.0.0.1:6379'), { maxRetriesPerRequest: null });

const schema = buildSchema(`
  scalar DateTime
  enum GenerationStatus { QUEUED RENDERING TRANSCODING SUCCEEDED FAILED CANCELED }
  enum ModelKind { IMAGE VIDEO }
  enum Resolution { R480P R720P R1080P }
  type Rendition { name: String! width: Int! height: Int! bandwidth: Int! }
  type GenerationOutput {
    hlsUrl: String videoUrl: String imageUrl: String posterUrl: String
    width: Int! height: Int! durationSeconds: Float renditions: [Rendition!]!
  }
  type Generation {
    id: ID!
    status: GenerationStatus!
    progress: Int!
    stage: String
    queuePosition: Int
    etaSeconds: Int
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
  type Query { healthy: Boolean! }
  type Subscription { generationUpdated(id: ID!): Generation! }
`);

const RESOLUTION = { '480p': 'R480P', '720p': 'R720P', '1080p': 'R1080P' };
const FINAL = new Set(['succeeded', 'failed', 'canceled']);
const QUEUE_POSITION_SQL =
  "SELECT count(*) AS n FROM generations WHERE status = 'queued' AND (queued_at, id) < ($1, $2)";
const time = (t) => (t == null ? null : new Date(t).toISOString());

// A row (PostgreSQL's, or the JSON a worker published) as the GraphQL object.
function toGraphQL(r, position = null) {
  return {
    id: r.id,
    status: r.status.toUpperCase(),
    progress: r.progress,
    stage: r.stage ?? null,
    queuePosition: r.status === 'queued' ? position : null,
    etaSeconds: null,
    model: r.model,
    kind: r.kind.toUpperCase(),
    prompt: r.prompt,
    negativePrompt: r.negative_prompt ?? null,
    resolution: RESOLUTION[r.resolution],
    durationSeconds: r.duration_seconds ?? null,
    seed: r.seed == null ? null : Number(r.seed),
    cost: Number(r.cost),
    error: r.error ?? null,
    mediaExpiredAt: time(r.media_expired_at),
    output: null,
    attempts: r.attempts,
    createdAt: time(r.created_at),
    queuedAt: time(r.queued_at),
    startedAt: time(r.started_at),
    finishedAt: time(r.finished_at),
    final: FINAL.has(r.status),
  };
}

// channel -> { feeds: Set<Feed>, ready: Promise }
const topics = new Map();

redis.on('message', (channel, message) => {
  const topic = topics.get(channel);
  if (!topic) return;
  let g;
  try {
    g = toGraphQL(JSON.parse(message));
  } catch (e) {
    console.warn(`unreadable generation event on ${channel}: ${e}`);
    return;
  }
  for (const feed of topic.feeds) feed.push(g);
});

function join(channel, feed) {
  let topic = topics.get(channel);
  if (!topic) {
    topic = { feeds: new Set(), ready: redis.subscribe(channel) };
    topics.set(channel, topic);
  }
  topic.feeds.add(feed);
  return topic.ready;
}

function leave(channel, feed) {
  const topic = topics.get(channel);
  if (!topic) return;
  topic.feeds.delete(feed);
  if (topic.feeds.size === 0) {
    topics.delete(channel);
    redis.unsubscribe(channel).catch(() => {});
  }
}

// One subscriber's stream: an async iterator over a queue of states.
class Feed {
  constructor(channel) {
    this.channel = channel;
    this.queue = [];
    this.waiting = null;
    this.closed = false;
    this.ended = false;
  }
  [Symbol.asyncIterator]() {
    return this;
  }
  push(g) {
    if (this.closed) return;
    if (this.waiting) {
      const resolve = this.waiting;
      this.waiting = null;
      resolve(this.emit(g));
    } else {
      this.queue.push(g);
    }
  }
  first(g) {
    this.queue.unshift(g);
  }
  emit(g) {
    if (g.final) this.ended = true;
    return { value: { generationUpdated: g }, done: false };
  }
  next() {
    if (this.ended) return this.return();
    if (this.queue.length > 0) return Promise.resolve(this.emit(this.queue.shift()));
    if (this.closed) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => {
      this.waiting = resolve;
    });
  }
  return() {
    if (!this.closed) {
      this.closed = true;
      this.queue = [];
      leave(this.channel, this);
    }
    if (this.waiting) {
      const resolve = this.waiting;
      this.waiting = null;
      resolve({ value: undefined, done: true });
    }
    return Promise.resolve({ value: undefined, done: true });
  }
  throw(e) {
    this.return();
    return Promise.reject(e);
  }
}

const roots = {
  subscription: {
    async generationUpdated({ id }, context) {
      if (!context.userId) {
        throw new GraphQLError('sign in first', { extensions: { code: 'UNAUTHENTICATED' } });
      }
      const channel = `${prefix}events:generation:${id}`;
      const feed = new Feed(channel);
      try {
        // Subscribed before reading, so no change after the read is missed.
        await join(channel, feed);
        const { rows } = await pool.query('SELECT * FROM generations WHERE id = $1 AND user_id = $2', [
          id,
          context.userId,
        ]);
        if (rows.length === 0) {
          throw new GraphQLError('generation not found', { extensions: { code: 'NOT_FOUND' } });
        }
        const row = rows[0];
        let position = null;
        if (row.status === 'queued') {
          const q = await pool.query(QUEUE_POSITION_SQL, [row.queued_at, row.id]);
          position = Number(q.rows[0].n) + 1;
        }
        feed.first(toGraphQL(row, position));
        return feed;
      } catch (e) {
        feed.return();
        throw e;
      }
    },
  },
};

const server = http.createServer(async (req, res) => {
  if (req.url === '/healthz') {
    try {
      await Promise.all([pool.query('SELECT 1'), redis.ping()]);
      res.writeHead(200).end('ok');
    } catch (e) {
      res.writeHead(503).end(String(e));
    }
    return;
  }
  res.writeHead(404).end();
});
const wss = new WebSocketServer({ server, path: '/graphql' });
let warned = false;
useServer(
  {
    schema,
    roots,
    onConnect(ctx) {
      const auth = ctx.connectionParams?.Authorization ?? ctx.connectionParams?.authorization ?? '';
      try {
        const claims = jwt.verify(String(auth).replace(/^Bearer /, ''), secret, { algorithms: ['HS256'] });
        ctx.extra.userId = claims.sub;
      } catch (e) {
        if (!warned) console.warn(`connection refused: ${e}`);
        warned = true;
        return false;
      }
      return true;
    },
    context: (ctx) => ({ userId: ctx.extra.userId }),
  },
  wss,
);
server.listen(Number(port), host, () => console.log(`graphql-ws peer on ws://${host}:${port}/graphql`));
const stop = () => {
  wss.close();
  server.close();
  redis.disconnect();
  pool.end().finally(() => process.exit(0));
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
