//! The sweeper: every `MAGE_SWEEP_INTERVAL_SECONDS`, in one worker process
//! at a time (a Redis lock that lives for one interval), it repairs what no
//! job will: QUEUED generations whose job Redis lost (restarted empty, or
//! the enqueue after the commit failed) are enqueued again; RENDERING or
//! TRANSCODING generations whose worker has been silent for
//! `MAGE_STALE_AFTER_SECONDS` are failed and their holds released; holds
//! left open by anything else are settled; deletions a crash left half
//! done are finished (media of deleted generations, what a racing request
//! made for a deleted account). Each action is logged with its generation
//! id. Mails of the outbox unsent a minute after they were written lost
//! their job (or wait for SMTP): they are enqueued again, each at most once
//! per [`MAIL_REQUEUE_EVERY`].

use std::sync::Arc;
use std::time::Duration;

use mage_domain::core::Core;
use mage_domain::generations;
use mage_domain::queue::RenderJob;
use tokio_util::sync::CancellationToken;

use crate::ctx::{Ctx, output_prefix};

/// A generation queued this recently may still be on its way into Redis
/// (committed, not yet enqueued): it is left alone.
pub const ENQUEUE_GRACE: Duration = Duration::from_secs(10);
/// A stored Stripe event unsettled for this long lost its job (settling
/// takes milliseconds).
const EVENT_GRACE: Duration = Duration::from_secs(120);
const EVENT_REQUEUE_EVERY: Duration = Duration::from_secs(600);
/// A mail unsent this long after it was written lost its job (a send
/// takes a second or two; a retry waits in the queue, and a duplicate job
/// sends nothing twice).
pub const MAIL_GRACE: Duration = Duration::from_secs(60);
/// An unsent mail is enqueued again at most this often: without SMTP it
/// waits, and one job in the queue is enough.
pub const MAIL_REQUEUE_EVERY: Duration = Duration::from_secs(600);
/// Failed settlement attempts after which the sweeper leaves an event to
/// admins (it stays FAILED-to-settle, visible with its error).
const EVENT_ATTEMPTS: i32 = 25;
/// A webhook event not fanned out, or a delivery overdue with no live
/// attempt, this long after it was due lost its listener, job or worker
/// (fan-out and a push take milliseconds; an attempt's lease is its
/// timeout + 5 s).
pub const WEBHOOK_GRACE: Duration = Duration::from_secs(15);
/// Rows looked at per pass and kind; the next pass takes the rest.
const BATCH: i64 = 500;
pub const STALE_MESSAGE: &str = "The render stopped responding; your credits were not charged.";

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    pub requeued: Vec<uuid::Uuid>,
    pub failed_stale: Vec<uuid::Uuid>,
    pub holds_settled: usize,
    /// Stripe events stored but not settled, enqueued again.
    pub events_requeued: usize,
    /// Generations whose media the retention policy deleted.
    pub media_expired: usize,
    /// Unsent mails of the outbox, enqueued again.
    pub mails_requeued: usize,
    /// Deleted generations whose media it purged, and things of deleted
    /// accounts it deleted or ended.
    pub deletions_finished: usize,
}

pub(crate) async fn run(ctx: Arc<Ctx>, stop: CancellationToken) {
    let every = ctx.settings.sweep_interval;
    let lock = ctx.core.redis.key("sweep:lock");
    // The first pass comes soon after start, so a Redis that restarted
    // empty with the workers is repaired without waiting a whole interval.
    let mut next = tokio::time::Instant::now() + ENQUEUE_GRACE.min(every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        next = tokio::time::Instant::now() + every;
        match take_lock(&ctx, &lock, every).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "sweeper: could not take its lock");
                continue;
            }
        }
        let started = std::time::Instant::now();
        let result = sweep(&ctx).await;
        mage_domain::metrics::job_finished(
            mage_domain::queue::Queue::Sweep.name(),
            if result.is_ok() { "ok" } else { "retry" },
            started.elapsed(),
        );
        match result {
            Ok(r) if r != SweepReport::default() => tracing::info!(
                requeued = r.requeued.len(),
                failed_stale = r.failed_stale.len(),
                holds_settled = r.holds_settled,
                events_requeued = r.events_requeued,
                mails_requeued = r.mails_requeued,
                deletions_finished = r.deletions_finished,
                "sweep done"
            ),
            Ok(_) => tracing::debug!("sweep: nothing to do"),
            Err(e) => tracing::warn!(error = %e, "sweep failed; the next one retries"),
        }
    }
}

/// `SET NX PX`: whoever sets it sweeps this interval; it expires by itself,
/// so a replica that dies holding it blocks one interval at most.
async fn take_lock(ctx: &Ctx, key: &str, ttl: Duration) -> Result<bool, mage_domain::Error> {
    let ttl_ms = ttl.as_millis().saturating_sub(200).max(100) as u64;
    ctx.core.redis.claim(key, &ctx.worker_name, Duration::from_millis(ttl_ms)).await
}

/// One pass, whatever the lock says (tests and `mage` tools call it).
pub async fn sweep_once(
    pool: &mage_domain::db::DbPool,
    redis: &mage_domain::kv::Redis,
    queues: &mage_domain::queue::Queues,
    stale_after: Duration,
) -> Result<SweepReport, mage_domain::Error> {
    let mut report = SweepReport::default();
    let mut conn = pool.get().await?;
    let now = chrono::Utc::now();

    let grace = chrono::Duration::from_std(ENQUEUE_GRACE).unwrap_or_default();
    for g in generations::queued_since(&mut conn, now - grace, BATCH).await? {
        if queues.render_alive(g.backend, g.id).await? {
            continue;
        }
        queues.push_render(g.backend, &RenderJob { generation_id: g.id }).await?;
        tracing::warn!(generation_id = %g.id, "sweeper: a queued generation had no job in Redis; enqueued it again");
        report.requeued.push(g.id);
    }

    let stale = chrono::Duration::from_std(stale_after).unwrap_or(chrono::Duration::MAX);
    for g in generations::stale(&mut conn, now - stale, BATCH).await? {
        if let Some(failed) = generations::fail(&mut conn, g.id, STALE_MESSAGE).await? {
            tracing::warn!(
                generation_id = %g.id,
                status = %g.status,
                worker = ?g.worker,
                heartbeat_at = ?g.heartbeat_at,
                "sweeper: no heartbeat for too long; failed the generation and released its credits"
            );
            generations::finished_with(redis, &failed).await;
            if let Err(e) = queues.forget_render(g.backend, g.id).await {
                tracing::debug!(generation_id = %g.id, error = %e, "could not drop the render index entry");
            }
            report.failed_stale.push(g.id);
        }
    }

    for h in generations::release_orphaned_holds(&mut conn, BATCH).await? {
        tracing::warn!(
            hold_id = %h.id,
            generation_id = ?h.generation_id,
            amount = h.amount,
            "sweeper: settled a hold left open by a finished generation"
        );
        mage_domain::events::publish_credits_changed_logged(redis, h.user_id).await;
        report.holds_settled += 1;
    }
    let before = now - chrono::Duration::from_std(EVENT_GRACE).unwrap_or_default();
    for event_id in mage_domain::payments::intake::unsettled(&mut conn, before, EVENT_ATTEMPTS, BATCH).await?
    {
        // Once per EVENT_REQUEUE_EVERY: while the settle workers are down the
        // job waits in the queue, and one copy is enough.
        if !redis.claim(&redis.key(&format!("settle:requeued:{event_id}")), "1", EVENT_REQUEUE_EVERY).await? {
            continue;
        }
        queues.push_settle(&mage_domain::queue::SettleJob { event_id: event_id.clone() }).await?;
        tracing::warn!(%event_id, "sweeper: a Stripe event was stored but never settled; enqueued it again");
        report.events_requeued += 1;
    }

    let before = now - chrono::Duration::from_std(MAIL_GRACE).unwrap_or_default();
    for mail_id in mage_domain::mail::unsent(&mut conn, before, crate::mail::ATTEMPTS, BATCH).await? {
        if !redis.claim(&redis.key(&format!("mail:requeued:{mail_id}")), "1", MAIL_REQUEUE_EVERY).await? {
            continue;
        }
        queues.push_mail(&mage_domain::queue::MailJob::Send { mail_id }).await?;
        tracing::warn!(%mail_id, "sweeper: a mail was written but not sent; enqueued it again");
        report.mails_requeued += 1;
    }

    if !report.requeued.is_empty() {
        mage_domain::events::publish_queue_advanced_logged(redis).await;
    }
    Ok(report)
}

async fn sweep(ctx: &Ctx) -> Result<SweepReport, mage_domain::Error> {
    let mut report =
        sweep_once(&ctx.core.pool, &ctx.core.redis, &ctx.core.queues, ctx.settings.stale_after).await?;
    if let Some(keep) = ctx.settings.media_retention {
        report.media_expired = expire_media_once(&ctx.core.pool, &ctx.core.storage, keep).await?;
    }
    // Before the assets: it marks those of deleted accounts deleted.
    report.deletions_finished = finish_deletions_once(&ctx.core, ctx.settings.stale_after).await?;
    // Uploads never completed, bytes nothing needs any more, retention of
    // assets, ingest jobs Redis lost.
    let retention_days = ctx.settings.media_retention.map(|keep| (keep.as_secs() / 86_400).max(1) as u32);
    let mut conn = ctx.core.pool.get().await?;
    let assets = mage_domain::assets::sweep(&ctx.core, &mut conn, chrono::Utc::now(), retention_days).await?;
    if assets > 0 {
        tracing::info!(assets, "sweeper: assets expired, purged or re-queued");
    }
    let seen = mage_domain::replicate::prune(&mut conn, chrono::Utc::now()).await?;
    if seen > 0 {
        tracing::debug!(seen, "sweeper: Replicate webhook ids older than a week forgotten");
    }
    drop(conn);
    webhooks(ctx).await?;
    let mut conn = ctx.core.pool.get().await?;
    let pruned = mage_domain::sessions::prune(&mut conn, BATCH).await?;
    if pruned > 0 {
        tracing::debug!(pruned, "sweeper: spent refresh tokens of a past period deleted");
    }
    Ok(report)
}

/// Webhooks: events no listener fanned out, deliveries whose job or worker
/// was lost (PENDING, overdue, no live lease), and the log past its
/// retention.
async fn webhooks(ctx: &Ctx) -> Result<(), mage_domain::Error> {
    use mage_domain::webhooks::{deliveries, events};
    let grace = chrono::Duration::from_std(WEBHOOK_GRACE).unwrap_or_default();
    let fanned = crate::webhooks::listen::catch_up(ctx, grace).await?;
    if fanned > 0 {
        tracing::warn!(fanned, "sweeper: webhook events no listener fanned out; fanned them out");
    }
    let mut conn = ctx.core.pool.get().await?;
    let lost = deliveries::lost(&mut conn, grace, BATCH).await?;
    for delivery_id in &lost {
        ctx.core
            .queues
            .push_deliver(&mage_domain::queue::DeliverJob { delivery_id: *delivery_id }, Duration::ZERO)
            .await?;
        tracing::warn!(%delivery_id, "sweeper: a webhook delivery was overdue with no attempt running; enqueued it again");
    }
    let pruned = events::prune(&mut conn, chrono::Utc::now(), BATCH).await?;
    if pruned > 0 {
        tracing::debug!(pruned, "sweeper: webhook events past their retention deleted with their log");
    }
    Ok(())
}

/// Deletes the stored media of generations that finished more than `keep`
/// ago (`MAGE_MEDIA_RETENTION_DAYS`) and marks them expired; nothing else
/// of theirs is touched. Returns how many.
pub async fn expire_media_once(
    pool: &mage_domain::db::DbPool,
    storage: &mage_domain::storage::Storage,
    keep: Duration,
) -> Result<usize, mage_domain::Error> {
    let before = chrono::Utc::now() - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
    let mut conn = pool.get().await?;
    let due = generations::media_due(&mut conn, before, BATCH).await?;
    for id in &due {
        // Deleted first, marked after: a crash in between deletes again
        // (harmless) rather than showing media that are gone.
        let files = storage.delete_prefix(&output_prefix(*id)).await?;
        generations::mark_media_expired(&mut conn, *id).await?;
        tracing::info!(generation_id = %id, files, "media retention: outputs deleted");
    }
    Ok(due.len())
}

/// Finishes deletions: the media of deleted generations that finished more
/// than `grace` ago and are not yet marked purged (a crash after the
/// deletion's commit, or a worker that was writing when it was cancelled),
/// and whatever a request racing an account deletion created for it.
/// Returns how many things it acted on.
pub async fn finish_deletions_once(core: &Core, grace: Duration) -> Result<usize, mage_domain::Error> {
    let mut conn = core.pool.get().await?;
    let mut n = mage_domain::accounts::finish_deletions(core, &mut conn, BATCH).await?;
    let before = chrono::Utc::now() - chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    for id in generations::deleted_media_due(&mut conn, before, BATCH).await? {
        let files = generations::purge_media(core, &mut conn, id, true).await?;
        if files > 0 {
            tracing::warn!(generation_id = %id, files, "sweeper: deleted the media a deleted generation left");
        }
        n += 1;
    }
    Ok(n)
}
