//! The queue's own writes to Redis, against what apalis-redis writes.

use std::collections::HashMap;
use std::time::Duration;

use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::TaskId;
use mage_domain::catalog::BackendKind;
use mage_domain::queue::{Queue, Queues, RenderJob};
use mage_domain::testing::TestRedis;
use uuid::Uuid;

async fn hgetall(conn: &mut redis::aio::ConnectionManager, key: &str) -> HashMap<String, String> {
    redis::cmd("HGETALL").arg(key).query_async(conn).await.expect("HGETALL")
}

/// The whole of a list (`LRANGE`) or sorted set (`ZRANGE`).
async fn all(conn: &mut redis::aio::ConnectionManager, command: &str, key: &str) -> Vec<String> {
    redis::cmd(command).arg(key).arg(0).arg(-1).query_async(conn).await.expect(command)
}

/// `Queues` pushes a task due now in one round trip of its own script
/// (`push_now`) instead of apalis-redis' push: the task must read back
/// exactly as one apalis-redis pushed, so its workers fetch, retry and
/// report it alike. A task apalis-redis pushed (due, so in the scheduled
/// set) is moved to the active list by the same call, and the wake-up and
/// the render index are written with it.
#[tokio::test]
async fn a_task_pushed_now_reads_back_as_apalis_redis_writes_it() {
    let test = TestRedis::new();
    let redis = test.redis();
    let queues = Queues::connect(redis.url(), redis.prefix()).await.expect("queues");
    let mut conn = queues.connection();
    let queue = Queue::Render(BackendKind::Synthetic);
    let config = queues.config(queue);

    // apalis-redis' own push, as Queues made it before.
    let job = RenderJob { generation_id: Uuid::now_v7() };
    let theirs = Uuid::new_v4().to_string();
    let task = TaskBuilder::new(serde_json::to_vec(&job).expect("json"))
        .task_id(TaskId::from_string(theirs.clone()));
    apalis_redis::queries::push_tasks(&mut conn, &config, &[task.build()]).await.expect("push_tasks");
    let scheduled = all(&mut conn, "ZRANGE", &config.scheduled_jobs_set()).await;
    assert_eq!(scheduled, vec![theirs.clone()], "apalis-redis schedules every task");

    // Ours, watched on the wake channel.
    let client = redis::Client::open(redis.url()).expect("client");
    let mut wake = client.get_async_pubsub().await.expect("pubsub");
    wake.subscribe(queues.wake_channel(queue)).await.expect("subscribe");
    let mine_job = RenderJob { generation_id: Uuid::now_v7() };
    queues.push_render(BackendKind::Synthetic, &mine_job).await.expect("push_render");
    let woke =
        tokio::time::timeout(Duration::from_secs(5), futures_util::StreamExt::next(&mut wake.on_message()))
            .await
            .expect("a wake-up within 5 s");
    assert!(woke.is_some());

    let index: HashMap<String, String> =
        hgetall(&mut conn, &format!("{}{queue}:by-generation", redis.prefix())).await;
    let mine =
        index.get(&mine_job.generation_id.to_string()).expect("the render index names the task").clone();

    let active = all(&mut conn, "LRANGE", &config.active_jobs_list()).await;
    assert_eq!(active, vec![mine.clone(), theirs.clone()], "ours first, then the due one promoted");
    let left: i64 =
        redis::cmd("ZCARD").arg(config.scheduled_jobs_set()).query_async(&mut conn).await.unwrap();
    assert_eq!(left, 0, "nothing due stays scheduled");
    let signal: i64 = redis::cmd("LLEN").arg(config.signal_list()).query_async(&mut conn).await.unwrap();
    assert_eq!(signal, 1, "apalis' own signal list says work is there");

    let data = hgetall(&mut conn, &config.job_data_hash()).await;
    assert_eq!(data[&mine], serde_json::to_string(&mine_job).unwrap());
    assert_eq!(data[&theirs], serde_json::to_string(&job).unwrap());
    let meta = |id: &str| format!("{}:{id}", config.job_meta_hash());
    let (ours, apalis) = (hgetall(&mut conn, &meta(&mine)).await, hgetall(&mut conn, &meta(&theirs)).await);
    assert_eq!(ours, apalis, "the same meta hash field for field");
    assert_eq!(ours.get("status").map(String::as_str), Some("Pending"));

    // Ours is alive to the sweeper's eye.
    assert!(queues.render_alive(BackendKind::Synthetic, mine_job.generation_id).await.expect("alive"));
}
