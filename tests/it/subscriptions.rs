//! Live subscriptions over WebSocket against real Redis and PostgreSQL:
//! generationUpdated, myGenerations, creditsChanged, queue positions, auth,
//! and that subscribers leave nothing behind.

use std::time::{Duration, Instant};

use crate::support::process::{Child, mage_on, serve_on, start_listening};
use crate::support::ws::{Ws, connect_signed_in, recv, recv_within, subscribe};
use crate::support::{TestApp, post_graphql, register_at};
use mage_domain::testing::{TestDb, TestRedis};
use serde_json::{Value, json};

const GENERATION_UPDATED: &str = "subscription($id: ID!) { generationUpdated(id: $id) { id status progress stage queuePosition error output { hlsUrl } } }";

fn video(seconds: i64) -> Value {
    json!({ "model": "synth-video", "prompt": "a lighthouse at dusk", "resolution": "R480P", "durationSeconds": seconds })
}

async fn create(app: &TestApp, token: &str, input: Value) -> String {
    let res = app
        .gql(
            "mutation($i: CreateGenerationInput!) { createGeneration(input: $i) { id } }",
            json!({ "i": input }),
            Some(token),
        )
        .await;
    res["data"]["createGeneration"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("create failed: {res}"))
        .to_owned()
}

/// The `next` payloads of subscription `id` until it completes.
async fn collect_until_complete(ws: &mut Ws, id: &str) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let msg = recv_within(ws, Duration::from_secs(60)).await.expect("socket open");
        if msg["id"] != id {
            continue;
        }
        match msg["type"].as_str() {
            Some("next") => out.push(msg["payload"].clone()),
            Some("complete") => return out,
            _ => panic!("unexpected {msg}"),
        }
    }
}

async fn next_of(ws: &mut Ws, id: &str) -> Value {
    next_of_within(ws, id, Duration::from_secs(30)).await
}

async fn next_of_within(ws: &mut Ws, id: &str, limit: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let msg = recv_within(ws, left).await.expect("socket open");
        if msg["id"] == id {
            assert_eq!(msg["type"], "next", "{msg}");
            return msg["payload"].clone();
        }
    }
}

/// A gauge of this server's `/metrics`.
async fn gauge(app: &TestApp, name: &str) -> f64 {
    let text = app
        .http
        .get(app.url("/metrics"))
        .bearer_auth(crate::support::METRICS_TOKEN)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

async fn wait_for_gauge(app: &TestApp, name: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = gauge(app, name).await;
        if v == want {
            return;
        }
        assert!(Instant::now() < deadline, "{name} stayed at {v}, expected {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn generation_updated_sends_the_current_state_then_every_change_then_completes() {
    let app = TestApp::start().await;
    let (token, _) = app.register("live@example.com").await;
    let id = create(&app, &token, video(5)).await;
    let mut ws = connect_signed_in(app.addr, Some(&token)).await;
    subscribe(&mut ws, "g", GENERATION_UPDATED, json!({ "id": id })).await;
    // No worker yet: the first event is where it stands now.
    let first = next_of(&mut ws, "g").await;
    assert_eq!(first["data"]["generationUpdated"]["status"], "QUEUED", "{first}");
    assert_eq!(first["data"]["generationUpdated"]["queuePosition"], 1, "{first}");

    let _workers = app.start_workers().await;
    let mut events = vec![first];
    events.extend(collect_until_complete(&mut ws, "g").await);
    let states: Vec<(String, i64)> = events
        .iter()
        .map(|e| {
            let g = &e["data"]["generationUpdated"];
            assert_eq!(g["id"], id.as_str(), "{e}");
            (g["status"].as_str().expect("status").to_owned(), g["progress"].as_i64().expect("progress"))
        })
        .collect();
    let order = ["QUEUED", "RENDERING", "TRANSCODING", "SUCCEEDED"];
    let rank =
        |s: &str| order.iter().position(|o| *o == s).unwrap_or_else(|| panic!("status {s}: {events:?}"));
    for pair in states.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(rank(&b.0) > rank(&a.0) || (b.0 == a.0 && b.1 >= a.1), "out of order: {states:?}");
    }
    for s in order {
        assert!(states.iter().any(|(st, _)| st == s), "never saw {s}: {states:?}");
    }
    let rendering: Vec<i64> = states.iter().filter(|(s, _)| s == "RENDERING").map(|(_, p)| *p).collect();
    assert!(
        rendering.len() >= 3 && rendering.last() > rendering.first(),
        "progress did not rise: {states:?}"
    );
    let last = &events.last().expect("events")["data"]["generationUpdated"];
    assert!(last["output"]["hlsUrl"].as_str().is_some_and(|u| u.ends_with(".m3u8")), "{last}");

    // A late subscriber to a finished generation gets its final state and
    // the stream completes at once.
    subscribe(&mut ws, "late", GENERATION_UPDATED, json!({ "id": id })).await;
    let late = collect_until_complete(&mut ws, "late").await;
    assert_eq!(late.len(), 1, "{late:?}");
    assert_eq!(late[0]["data"]["generationUpdated"]["status"], "SUCCEEDED");
    wait_for_gauge(&app, "mage_subscriptions", 0.0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_positions_and_credits_are_pushed_and_my_generations_sees_every_change() {
    let app = TestApp::start().await;
    let (token, _) = app.register("queue@example.com").await;
    // A socket per subscription: a helper that waits for one subscription's
    // messages skips the others'.
    let mut ws = connect_signed_in(app.addr, Some(&token)).await;
    let mut mine = connect_signed_in(app.addr, Some(&token)).await;
    let mut third = connect_signed_in(app.addr, Some(&token)).await;
    subscribe(&mut ws, "c", "subscription { creditsChanged { balance held } }", json!({})).await;
    assert_eq!(next_of(&mut ws, "c").await["data"]["creditsChanged"], json!({ "balance": 100, "held": 0 }));
    subscribe(&mut mine, "mine", "subscription { myGenerations { id status queuePosition } }", json!({}))
        .await;
    let ids = [
        create(&app, &token, video(5)).await,
        create(&app, &token, video(5)).await,
        create(&app, &token, video(5)).await,
    ];
    // 480p costs 10 per 5 s and up: three holds, one credits event each.
    let mut held = 0;
    while held < 3 * 10 {
        let c = next_of(&mut ws, "c").await;
        held = c["data"]["creditsChanged"]["held"].as_i64().expect("held");
        assert_eq!(c["data"]["creditsChanged"]["balance"].as_i64().expect("balance") + held, 100, "{c}");
    }
    // Each creation, and the positions the hub computes for them.
    let mut positions = std::collections::HashMap::new();
    while positions.len() < 3 || positions.values().any(|p: &Value| p.is_null()) {
        let g = next_of(&mut mine, "mine").await["data"]["myGenerations"].clone();
        assert_eq!(g["status"], "QUEUED", "{g}");
        positions.insert(g["id"].as_str().expect("id").to_owned(), g["queuePosition"].clone());
    }
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(positions[id], i + 1, "{positions:?}");
    }

    subscribe(
        &mut third,
        "third",
        "subscription($id: ID!) { generationUpdated(id: $id) { queuePosition } }",
        json!({ "id": ids[2] }),
    )
    .await;
    assert_eq!(next_of(&mut third, "third").await["data"]["generationUpdated"]["queuePosition"], 3);
    for (cancel, expect) in [(&ids[0], 2), (&ids[1], 1)] {
        let res = app
            .gql(
                "mutation($id: ID!) { cancelGeneration(id: $id) { status } }",
                json!({ "id": cancel }),
                Some(&token),
            )
            .await;
        assert_eq!(res["data"]["cancelGeneration"]["status"], "CANCELED", "{res}");
        let pos = next_of(&mut third, "third").await;
        assert_eq!(pos["data"]["generationUpdated"]["queuePosition"], expect, "{pos}");
        // myGenerations: the cancel, then (maybe after other moves) the new
        // position of the third.
        let mut saw_cancel = false;
        let mut saw_position = false;
        while !(saw_cancel && saw_position) {
            let g = next_of(&mut mine, "mine").await["data"]["myGenerations"].clone();
            saw_cancel |= g["id"] == cancel.as_str() && g["status"] == "CANCELED";
            saw_position |= g["id"] == ids[2].as_str() && g["queuePosition"] == expect;
        }
        let c = next_of(&mut ws, "c").await;
        assert_eq!(c["data"]["creditsChanged"]["held"], 10 * expect, "{c}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_credentials_and_other_users_generations_get_an_error_and_spare_the_other_subscriptions() {
    let app = TestApp::start().await;
    let (alice, _) = app.register("alice@example.com").await;
    let (bob, _) = app.register("bob@example.com").await;
    let bobs = create(&app, &bob, video(5)).await;

    // Without a token, and with a bad one: UNAUTHENTICATED, no stream.
    for token in [None, Some("forged")] {
        let mut ws = connect_signed_in(app.addr, token).await;
        subscribe(&mut ws, "1", GENERATION_UPDATED, json!({ "id": bobs })).await;
        let msg = recv(&mut ws).await.expect("an answer");
        assert_eq!(msg["payload"]["errors"][0]["extensions"]["code"], "UNAUTHENTICATED", "{msg}");
        assert_eq!(recv(&mut ws).await.expect("complete")["type"], "complete");
    }

    let mut ws = connect_signed_in(app.addr, Some(&alice)).await;
    subscribe(&mut ws, "credits", "subscription { creditsChanged { balance held } }", json!({})).await;
    assert_eq!(next_of(&mut ws, "credits").await["data"]["creditsChanged"]["balance"], 100);
    for (id, bad) in
        [("bob", bobs.as_str()), ("junk", "not-an-id"), ("missing", "0190c0de-0000-7000-8000-000000000000")]
    {
        subscribe(&mut ws, id, GENERATION_UPDATED, json!({ "id": bad })).await;
        let msg = loop {
            let m = recv(&mut ws).await.expect("an answer");
            if m["id"] == id {
                break m;
            }
        };
        assert_eq!(msg["payload"]["errors"][0]["extensions"]["code"], "NOT_FOUND", "{msg}");
    }
    // The socket and its first subscription still work.
    create(&app, &alice, video(5)).await;
    let c = next_of(&mut ws, "credits").await;
    assert_eq!(c["data"]["creditsChanged"], json!({ "balance": 90, "held": 10 }), "{c}");
    wait_for_gauge(&app, "mage_subscriptions", 1.0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_thousand_subscribers_each_get_their_events_and_leave_nothing_behind() {
    const SUBSCRIBERS: usize = 2000;
    // This test is about delivery and clean-up, not speed (bench/ measures
    // that): one generous deadline for the whole crowd, since 2,000 sockets
    // and the server share two cores with whatever else CI runs.
    const PATIENCE: Duration = Duration::from_secs(300);
    let app = TestApp::start().await;
    let (token, user_id) = app.register("many@example.com").await;
    let ids = [
        create(&app, &token, video(5)).await,
        create(&app, &token, video(5)).await,
        create(&app, &token, video(5)).await,
        create(&app, &token, video(5)).await,
    ];
    let sockets_before = gauge(&app, "mage_websocket_connections").await;

    let mut tasks = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(SUBSCRIBERS);
    let go = std::sync::Arc::new(tokio::sync::Notify::new());
    for i in 0..SUBSCRIBERS {
        let (addr, token, id, ready, _go) =
            (app.addr, token.clone(), ids[i % ids.len()].clone(), ready_tx.clone(), go.clone());
        tasks.push(tokio::spawn(async move {
            let mut ws = connect_signed_in(addr, Some(&token)).await;
            subscribe(
                &mut ws,
                "g",
                "subscription($id: ID!) { generationUpdated(id: $id) { id progress stage } }",
                json!({ "id": id }),
            )
            .await;
            let first = next_of_within(&mut ws, "g", PATIENCE).await;
            assert_eq!(first["data"]["generationUpdated"]["progress"], 0);
            ready.send(()).await.expect("ready");
            let ev = next_of_within(&mut ws, "g", PATIENCE).await;
            let g = &ev["data"]["generationUpdated"];
            assert_eq!(g["id"], id.as_str(), "{ev}");
            assert_eq!(g["progress"], 42, "{ev}");
            drop(ws);
        }));
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    for ready in 0..SUBSCRIBERS {
        tokio::time::timeout_at(deadline, ready_rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {ready} of {SUBSCRIBERS} subscribers got their first state"));
    }
    assert_eq!(gauge(&app, "mage_subscriptions").await, SUBSCRIBERS as f64);
    assert_eq!(gauge(&app, "mage_pubsub_channels").await, ids.len() as f64);

    // What a worker publishes: the row, progressed.
    let mut conn = app.conn().await;
    for id in &ids {
        let mut row = mage_domain::generations::find(&mut conn, id.parse().expect("uuid"))
            .await
            .expect("find")
            .expect("row");
        assert_eq!(row.user_id.to_string(), user_id);
        row.progress = 42;
        row.stage = Some("sampling".into());
        mage_domain::events::publish_generation(&app.redis.redis(), &row, false).await.expect("publish");
    }
    for t in tasks {
        tokio::time::timeout(PATIENCE, t).await.expect("every subscriber got its event").expect("task");
    }
    wait_for_gauge(&app, "mage_subscriptions", 0.0).await;
    wait_for_gauge(&app, "mage_pubsub_channels", 0.0).await;
    wait_for_gauge(&app, "mage_websocket_connections", sockets_before).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_on_one_instance_sees_every_event_of_a_generation_made_through_another() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let media = tempfile::tempdir().expect("media");
    let serve = || {
        let mut cmd = serve_on(&db, &redis);
        cmd.env("MAGE_MEDIA_DIR", media.path());
        start_listening(cmd)
    };
    let (_serve_a, a) = serve().await;
    let (_serve_b, b) = serve().await;
    let http = reqwest::Client::new();

    let gql_a = format!("http://127.0.0.1:{a}/graphql");
    let (token, _) = register_at(&http, &gql_a, "two@example.com").await;
    let res = post_graphql(
        &http,
        &gql_a,
        "mutation($i: CreateGenerationInput!) { createGeneration(input: $i) { id } }",
        json!({ "i": video(5) }),
        Some(&token),
    )
    .await;
    let id = res["data"]["createGeneration"]["id"].as_str().expect("id").to_owned();

    let mut ws = connect_signed_in(format!("127.0.0.1:{b}").parse().expect("addr"), Some(&token)).await;
    subscribe(&mut ws, "g", GENERATION_UPDATED, json!({ "id": id })).await;
    let first = next_of(&mut ws, "g").await;
    assert_eq!(first["data"]["generationUpdated"]["status"], "QUEUED", "{first}");
    let _work = Child::spawn(mage_on("work", &db, &redis).env("MAGE_MEDIA_DIR", media.path()));
    let events = collect_until_complete(&mut ws, "g").await;
    let statuses: Vec<&str> =
        events.iter().filter_map(|e| e["data"]["generationUpdated"]["status"].as_str()).collect();
    let mut distinct = statuses.clone();
    distinct.dedup();
    assert_eq!(distinct, ["RENDERING", "TRANSCODING", "SUCCEEDED"], "{events:?}");
    assert!(statuses.iter().filter(|s| **s == "RENDERING").count() >= 3, "no progress events: {events:?}");
}
