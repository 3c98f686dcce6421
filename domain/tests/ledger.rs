//! The credits ledger against the real PostgreSQL: exactly-once under
//! retries, duplicates, concurrency and crashes, with the invariants checked
//! after every scenario.

use chrono::{Duration, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection, TransactionManager};
use mage_domain::credits::{self, Clawback, EntryKind, GrantSource, NewGrant};
use mage_domain::db::DbPool;
use mage_domain::testing::TestDb;
use mage_domain::{Error, users};
use uuid::Uuid;

async fn user(pool: &DbPool, email: &str, signup: i64) -> Uuid {
    users::register(pool, email, "a long enough password", signup).await.expect("register").id
}

async fn audit_ok(pool: &DbPool, user_id: Uuid) -> credits::Audit {
    let mut conn = pool.get().await.expect("conn");
    let audit = credits::audit(&mut conn, user_id).await.expect("audit");
    assert!(audit.holds(), "invariant broken: {audit:?}");
    audit
}

fn grant(user_id: Uuid, amount: i64, key: &str) -> NewGrant {
    NewGrant {
        user_id,
        amount,
        source: GrantSource::Admin,
        expires_at: None,
        order_id: None,
        stripe_event_id: None,
        memo: None,
        idempotency_key: key.into(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_grant_credits_once_even_when_concurrent() {
    let db = TestDb::new().await;
    let pool = db.pool();
    let u = user(&pool, "g@example.com", 0).await;
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut conn = pool.get().await.expect("conn");
                credits::grant(&mut conn, grant(u, 25, "same-key")).await.expect("grant").id
            })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.expect("task"));
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every retry returns the first entry");
    let audit = audit_ok(&pool, u).await;
    assert_eq!(audit.balance, 25);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_holds_never_overspend() {
    let db = TestDb::new().await;
    let pool = db.pool();
    let u = user(&pool, "h@example.com", 100).await;
    // 40 holds of 10 against 100 available: exactly 10 may succeed.
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut conn = pool.get().await.expect("conn");
                credits::hold(&mut conn, u, 10, None, &format!("hold-{i}")).await
            })
        })
        .collect();
    let (mut ok, mut short) = (0, 0);
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => ok += 1,
            Err(Error::InsufficientCredits { required: 10, available }) => {
                assert!(available < 10);
                short += 1;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!((ok, short), (10, 30));
    let audit = audit_ok(&pool, u).await;
    assert_eq!((audit.balance, audit.held), (100, 100));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hold_is_captured_or_released_once_never_both() {
    let db = TestDb::new().await;
    let pool = db.pool();
    let u = user(&pool, "c@example.com", 100).await;
    let mut conn = pool.get().await.expect("conn");
    let hold = credits::hold(&mut conn, u, 30, None, "gen-1").await.expect("hold");
    // The same key again returns the same hold and holds nothing more.
    let again = credits::hold(&mut conn, u, 30, None, "gen-1").await.expect("hold again");
    assert_eq!(hold.id, again.id);
    drop(conn);

    // Captures and releases racing: whichever closes the hold first wins,
    // the rest of its kind are no-ops and the other kind is a conflict.
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut conn = pool.get().await.expect("conn");
                if i % 2 == 0 {
                    credits::capture(&mut conn, hold.id).await.map(|e| e.kind)
                } else {
                    credits::release(&mut conn, hold.id).await.map(|e| e.kind)
                }
            })
        })
        .collect();
    let mut kinds = std::collections::HashSet::new();
    for t in tasks {
        match t.await.expect("task") {
            Ok(kind) => {
                kinds.insert(kind);
            }
            Err(Error::Conflict(_)) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(kinds.len(), 1, "one way only: {kinds:?}");
    let audit = audit_ok(&pool, u).await;
    assert_eq!(audit.held, 0);
    let expected = if kinds.contains(&EntryKind::Capture) { 70 } else { 100 };
    assert_eq!(audit.balance, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn capture_spends_the_credits_that_expire_first() {
    let db = TestDb::new().await;
    let pool = db.pool();
    let u = user(&pool, "e@example.com", 100).await;
    let mut conn = pool.get().await.expect("conn");
    let soon = Utc::now() + Duration::days(3);
    credits::grant(
        &mut conn,
        NewGrant { expires_at: Some(soon), source: GrantSource::Promo, ..grant(u, 40, "promo") },
    )
    .await
    .expect("promo");
    assert_eq!(credits::expiring_soon(&mut conn, u, Duration::days(7)).await.expect("soon"), 40);
    let hold = credits::hold(&mut conn, u, 50, None, "spend").await.expect("hold");
    credits::capture(&mut conn, hold.id).await.expect("capture");
    // The 40 expiring credits went first, then 10 of the signup bonus.
    assert_eq!(credits::expiring_soon(&mut conn, u, Duration::days(7)).await.expect("soon"), 0);
    let audit = audit_ok(&pool, u).await;
    assert_eq!(audit.balance, 90);
}

#[tokio::test(flavor = "multi_thread")]
async fn clawback_may_go_negative_and_then_blocks_spending() {
    let db = TestDb::new().await;
    let pool = db.pool();
    let u = user(&pool, "k@example.com", 0).await;
    let mut conn = pool.get().await.expect("conn");
    let bought =
        credits::grant(&mut conn, NewGrant { source: GrantSource::Purchase, ..grant(u, 100, "order-1") })
            .await
            .expect("purchase");
    let hold = credits::hold(&mut conn, u, 80, None, "gen").await.expect("hold");
    credits::capture(&mut conn, hold.id).await.expect("capture");
    let claw = Clawback {
        user_id: u,
        amount: 100,
        grant_id: bought.grant_id,
        order_id: None,
        stripe_event_id: Some("evt_1".into()),
        memo: Some("refund".into()),
        idempotency_key: "refund:evt_1".into(),
    };
    credits::clawback(&mut conn, claw.clone()).await.expect("clawback");
    credits::clawback(&mut conn, claw).await.expect("clawback retried");
    let audit = audit_ok(&pool, u).await;
    assert_eq!(audit.balance, -80);
    let err = credits::hold(&mut conn, u, 1, None, "blocked").await.expect_err("negative balance");
    assert!(matches!(err, Error::InsufficientCredits { available: -80, .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_inside_a_transaction_leaves_nothing_behind() {
    let db = TestDb::new().await;
    let pool = db.pool();
    let u = user(&pool, "x@example.com", 100).await;
    {
        // The caller's transaction holds credits, then dies before commit.
        let mut conn = mage_domain::db::connect(db.url()).await.expect("conn");
        let r: Result<(), Error> = conn
            .transaction::<_, Error, _>(async |conn| {
                credits::hold(conn, u, 60, None, "crashing").await?;
                Err(Error::Internal("worker died".into()))
            })
            .await;
        assert!(r.is_err());
        // And a connection dropped mid-transaction (a killed process):
        let mut conn = mage_domain::db::connect(db.url()).await.expect("conn");
        <AsyncPgConnection as AsyncConnection>::TransactionManager::begin_transaction(&mut conn)
            .await
            .expect("begin");
        credits::hold(&mut conn, u, 60, None, "killed").await.expect("hold");
        drop(conn);
    }
    let audit = audit_ok(&pool, u).await;
    assert_eq!((audit.balance, audit.held), (100, 0));
    // The keys were never used, so a retry goes through.
    let mut conn = pool.get().await.expect("conn");
    credits::hold(&mut conn, u, 60, None, "killed").await.expect("retry after crash");
    audit_ok(&pool, u).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_amounts_are_refused() {
    let db = TestDb::new().await;
    let pool = db.pool();
    let u = user(&pool, "b@example.com", 10).await;
    let mut conn = pool.get().await.expect("conn");
    assert!(matches!(credits::grant(&mut conn, grant(u, 0, "zero")).await, Err(Error::InvalidInput { .. })));
    assert!(matches!(credits::hold(&mut conn, u, -5, None, "neg").await, Err(Error::InvalidInput { .. })));
    assert!(matches!(
        credits::grant(&mut conn, grant(Uuid::new_v4(), 5, "ghost")).await,
        Err(Error::NotFound(_))
    ));
    audit_ok(&pool, u).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_are_per_account_and_a_reused_key_is_a_conflict() {
    let db = TestDb::new().await;
    let pool = db.pool();
    let a = user(&pool, "a@example.com", 100).await;
    let b = user(&pool, "b@example.com", 100).await;
    let mut conn = pool.get().await.expect("conn");
    // One key on two accounts: two operations, each on its own account.
    let ha = credits::hold(&mut conn, a, 10, None, "gen:1").await.expect("hold a");
    let hb = credits::hold(&mut conn, b, 20, None, "gen:1").await.expect("hold b");
    assert_ne!(ha.id, hb.id);
    assert_eq!(hb.user_id, b);
    // The same key for another amount or another kind of operation.
    let err = credits::hold(&mut conn, a, 11, None, "gen:1").await.expect_err("other amount");
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    let err = credits::grant(&mut conn, grant(a, 10, "gen:1")).await.expect_err("other kind");
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    // A hold made under a capture's key cannot pass for that capture.
    let key = format!("capture:{}", ha.id);
    credits::hold(&mut conn, a, 5, None, &key).await.expect("odd but allowed");
    let err = credits::capture(&mut conn, ha.id).await.expect_err("key squatted");
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    audit_ok(&pool, a).await;
    audit_ok(&pool, b).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pooled_sessions_cannot_hold_locks_for_ever() {
    use diesel::QueryableByName;
    use diesel_async::RunQueryDsl;
    #[derive(QueryableByName)]
    struct Setting {
        #[diesel(sql_type = diesel::sql_types::Text)]
        value: String,
    }
    let db = TestDb::new().await;
    let pool = db.pool();
    let mut conn = pool.get().await.expect("conn");
    let idle: Setting =
        diesel::sql_query("SELECT current_setting('idle_in_transaction_session_timeout') AS value")
            .get_result(&mut conn)
            .await
            .expect("setting");
    assert_eq!(idle.value, "1min");
    let lock: Setting = diesel::sql_query("SELECT current_setting('lock_timeout') AS value")
        .get_result(&mut conn)
        .await
        .expect("setting");
    assert_eq!(lock.value, "15s");
}
