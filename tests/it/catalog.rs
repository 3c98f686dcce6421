//! The catalogue admin API: admins create and replace render models and
//! products; every instance sells at the new terms within 2 s, and what was
//! already bought keeps its price.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::{TestApp, code, post_graphql};
use mage_domain::users::Role;
use serde_json::{Value, json};

const MODEL: &str = "id name kind backend workflow active fps renderTimeoutSeconds maxAttempts sortOrder
    inputs maxDurationSeconds defaultDurationSeconds prices { resolution credits creditsPerSecond }";
const PRODUCT: &str = "id name kind credits priceCents currency stripePriceId active sortOrder";

fn create_model() -> String {
    format!("mutation($id: String!, $i: ModelInput!) {{ createModel(id: $id, input: $i) {{ {MODEL} }} }}")
}

fn update_model() -> String {
    format!("mutation($id: ID!, $i: ModelInput!) {{ updateModel(id: $id, input: $i) {{ {MODEL} }} }}")
}

fn create_product() -> String {
    format!("mutation($i: ProductInput!) {{ createProduct(input: $i) {{ {PRODUCT} }} }}")
}

fn update_product() -> String {
    format!("mutation($id: ID!, $i: ProductInput!) {{ updateProduct(id: $id, input: $i) {{ {PRODUCT} }} }}")
}

const QUOTE: &str = "query($i: CreateGenerationInput!) { quote(input: $i) }";

/// A synthetic video model at `per_second` credits a second (480p).
fn fox(per_second: i64) -> Value {
    json!({
        "name": "Fox video", "kind": "VIDEO", "backend": "SYNTHETIC", "workflow": "text-to-video",
        "prices": [{ "resolution": "R480P", "credits": 1, "creditsPerSecond": per_second },
                   { "resolution": "R720P", "credits": 2, "creditsPerSecond": per_second * 2 }],
        "maxDurationSeconds": 8, "defaultDurationSeconds": 4, "sortOrder": 5,
    })
}

fn fox_input() -> Value {
    json!({ "model": "fox", "prompt": "a fox in the snow", "resolution": "R480P", "durationSeconds": 4 })
}

/// Signs up an admin and a user; returns their tokens.
async fn admin_and_user(app: &TestApp) -> (String, String) {
    let (admin, _) = app.register("admin@example.com").await;
    mage_domain::users::set_role(&app.pool, "admin@example.com", Role::Admin).await.expect("promote");
    let (user, _) = app.register("user@example.com").await;
    (admin, user)
}

fn field(res: &Value) -> &str {
    assert_eq!(code(res), "BAD_USER_INPUT", "{res}");
    res["errors"][0]["extensions"]["field"].as_str().unwrap_or_else(|| panic!("no field in {res}"))
}

/// Another API instance on the same database and Redis, with a model
/// cache of its own (as a second `mage serve` has); stops when dropped.
struct Instance {
    url: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn another_instance(app: &TestApp) -> Instance {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let core = mage_domain::core::Core::new(
        app.pool.clone(),
        app.redis.redis(),
        app.queues.clone(),
        app.storage.clone(),
    );
    let state = mage_api::AppState::new(core, app.settings.clone());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(mage_api::serve_on(listener, state, async move {
        let _ = rx.await;
    }));
    Instance { url: format!("http://{addr}/graphql"), _stop: tx }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_adds_a_model_users_buy_it_and_a_new_price_reaches_every_instance() {
    let app = TestApp::start().await;
    let (admin, user) = admin_and_user(&app).await;
    let other = another_instance(&app).await;

    let res = app.gql(&create_model(), json!({ "id": "fox", "i": fox(2) }), Some(&admin)).await;
    let m = &res["data"]["createModel"];
    assert_eq!(m["backend"], "SYNTHETIC", "{res}");
    assert_eq!(
        (m["fps"].clone(), m["active"].clone(), m["sortOrder"].clone()),
        (json!(24), json!(true), json!(5))
    );
    assert_eq!(m["maxAttempts"], Value::Null);
    assert_eq!(m["prices"][0], json!({ "resolution": "R480P", "credits": 1, "creditsPerSecond": 2 }));

    // On sale at once, on both instances.
    let res = app.gql("{ models { id } }", json!({}), None).await;
    assert!(res["data"]["models"].as_array().expect("models").iter().any(|m| m["id"] == "fox"), "{res}");
    assert_eq!(app.gql(QUOTE, json!({ "i": fox_input() }), None).await["data"]["quote"], 9);
    let quote_there =
        async || post_graphql(&app.http, &other.url, QUOTE, json!({ "i": fox_input() }), None).await;
    assert_eq!(quote_there().await["data"]["quote"], 9, "the other instance now keeps the 9");

    let res = app
        .gql(
            "mutation($i: CreateGenerationInput!) { createGeneration(input: $i) { id status cost } }",
            json!({ "i": fox_input() }),
            Some(&user),
        )
        .await;
    let generation = res["data"]["createGeneration"].clone();
    assert_eq!(
        (generation["status"].as_str(), generation["cost"].as_i64()),
        (Some("QUEUED"), Some(9)),
        "{res}"
    );

    // A new price: here at once, on the other instance within 2 s.
    let res = app.gql(&update_model(), json!({ "id": "fox", "i": fox(3) }), Some(&admin)).await;
    assert_eq!(res["data"]["updateModel"]["prices"][0]["creditsPerSecond"], 3, "{res}");
    assert_eq!(res["data"]["updateModel"]["sortOrder"], 5, "{res}");
    let mut unsorted = fox(3);
    unsorted.as_object_mut().expect("object").remove("sortOrder");
    let res = app.gql(&update_model(), json!({ "id": "fox", "i": unsorted }), Some(&admin)).await;
    assert_eq!(res["data"]["updateModel"]["sortOrder"], 5, "an omitted sortOrder keeps the place: {res}");
    assert_eq!(app.gql(QUOTE, json!({ "i": fox_input() }), None).await["data"]["quote"], 13);
    let deadline = Instant::now() + Duration::from_millis(2500);
    loop {
        let q = quote_there().await;
        if q["data"]["quote"] == 13 {
            break;
        }
        assert_eq!(q["data"]["quote"], 9, "{q}");
        assert!(Instant::now() < deadline, "the other instance still quotes the old price");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // What was bought keeps its price and its hold.
    let res = app
        .gql(
            "query($id: ID!) { generation(id: $id) { status cost } me { credits { balance held } } }",
            json!({ "id": generation["id"] }),
            Some(&user),
        )
        .await;
    assert_eq!(res["data"]["generation"], json!({ "status": "QUEUED", "cost": 9 }), "{res}");
    assert_eq!(res["data"]["me"]["credits"], json!({ "balance": 91, "held": 9 }), "{res}");

    // Taken off sale: hidden and refused, still listed for admins.
    let mut off = fox(3);
    off["active"] = json!(false);
    let res = app.gql(&update_model(), json!({ "id": "fox", "i": off }), Some(&admin)).await;
    assert_eq!(res["data"]["updateModel"]["active"], false, "{res}");
    let res = app.gql("{ models { id } }", json!({}), None).await;
    assert!(!res["data"]["models"].as_array().expect("models").iter().any(|m| m["id"] == "fox"), "{res}");
    assert_eq!(field(&app.gql(QUOTE, json!({ "i": fox_input() }), None).await), "model");
    let res = app.gql("{ catalogModels { id active backend } }", json!({}), Some(&admin)).await;
    let all = res["data"]["catalogModels"].as_array().expect("catalogModels");
    assert!(
        all.iter().any(|m| *m == json!({ "id": "fox", "active": false, "backend": "SYNTHETIC" })),
        "{res}"
    );
    assert!(all.iter().any(|m| m["id"] == "synth-video"), "{res}");

    // One id, one model.
    let res = app.gql(&create_model(), json!({ "id": "fox", "i": fox(2) }), Some(&admin)).await;
    assert_eq!(code(&res), "CONFLICT", "{res}");
    let res = app.gql(&update_model(), json!({ "id": "no-such-model", "i": fox(2) }), Some(&admin)).await;
    assert_eq!(code(&res), "NOT_FOUND", "{res}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_model_definition_names_its_field_and_changes_nothing() {
    let app = TestApp::start().await;
    let (admin, _) = admin_and_user(&app).await;
    let models_before = app.count("render_models").await;
    let with = |changes: Value| {
        let mut m = fox(2);
        for (k, v) in changes.as_object().expect("object") {
            m[k] = v.clone();
        }
        m
    };
    let image = json!({ "kind": "IMAGE", "workflow": "text-to-image", "maxDurationSeconds": null,
        "defaultDurationSeconds": null, "prices": [{ "resolution": "R480P", "credits": 2 }] });
    let cases = [
        ("Fox", fox(2), "id"),
        ("fox--1", fox(2), "id"),
        ("fox", with(json!({ "name": "  " })), "name"),
        ("fox", with(json!({ "prices": [] })), "prices"),
        (
            "fox",
            with(
                json!({ "prices": [{ "resolution": "R480P", "credits": 1 }, { "resolution": "R480P", "credits": 2 }] }),
            ),
            "prices",
        ),
        ("fox", with(json!({ "prices": [{ "resolution": "R480P", "credits": 0 }] })), "prices"),
        (
            "fox",
            with(json!({ "prices": [{ "resolution": "R480P", "credits": 3, "creditsPerSecond": -1 }] })),
            "prices",
        ),
        ("fox", with(json!({ "maxDurationSeconds": null })), "maxDurationSeconds"),
        ("fox", with(json!({ "defaultDurationSeconds": 9 })), "defaultDurationSeconds"),
        ("fox", with(image.clone()).tap(|m| m["maxDurationSeconds"] = json!(5)), "maxDurationSeconds"),
        ("fox", with(json!({ "fps": 0 })), "fps"),
        ("fox", with(json!({ "renderTimeoutSeconds": 0 })), "renderTimeoutSeconds"),
        ("fox", with(json!({ "maxAttempts": 0 })), "maxAttempts"),
        ("fox", with(json!({ "workflow": "no-such-workflow" })), "workflow"),
        ("fox", with(json!({ "workflow": "../comfyui/text-to-video" })), "workflow"),
        ("fox", with(json!({ "workflow": "text-to-image" })), "workflow"),
        ("fox", with(json!({ "workflow": "image-to-video" })), "inputs"),
        ("fox", with(json!({ "inputs": ["IMAGE"] })), "inputs"),
        ("fox", with(json!({ "backend": "COMFYUI", "workflow": "image-to-video" })), "inputs"),
        ("fox", with(json!({ "backend": "COMFYUI", "workflow": "no-such-template" })), "workflow"),
        ("fox", with(image.clone()).tap(|m| m["prices"][0]["creditsPerSecond"] = json!(1)), "prices"),
    ];
    for (id, input, expected) in cases {
        let res = app.gql(&create_model(), json!({ "id": id, "i": input }), Some(&admin)).await;
        assert_eq!(field(&res), expected, "{id} {input}: {res}");
    }
    assert_eq!(app.count("render_models").await, models_before);
    // The same checks on an update, which leaves the model as it was.
    let res = app
        .gql(&update_model(), json!({ "id": "synth-video", "i": with(json!({ "fps": 500 })) }), Some(&admin))
        .await;
    assert_eq!(field(&res), "fps");
    let res = app.gql(QUOTE, json!({ "i": { "model": "synth-video", "prompt": "x", "resolution": "R480P", "durationSeconds": 5 } }), None).await;
    assert_eq!(res["data"]["quote"], 10, "{res}");

    // The shipped ComfyUI templates pass, on a backend this deployment
    // does not offer: the model is kept, hidden until it is.
    let good = with(image).tap(|m| m["backend"] = json!("COMFYUI"));
    let res = app.gql(&create_model(), json!({ "id": "comfy-image", "i": good }), Some(&admin)).await;
    assert_eq!(res["data"]["createModel"]["backend"], "COMFYUI", "{res}");
    let res = app.gql("{ models { id } }", json!({}), None).await;
    assert!(
        !res["data"]["models"].as_array().expect("models").iter().any(|m| m["id"] == "comfy-image"),
        "{res}"
    );
}

trait Tap: Sized {
    fn tap(self, f: impl FnOnce(&mut Self)) -> Self;
}

impl Tap for Value {
    fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_catalogue_editor_is_for_admins_in_person() {
    let app = TestApp::start().await;
    let (admin, user) = admin_and_user(&app).await;
    let product =
        json!({ "name": "Pack", "kind": "PACK", "credits": 10, "priceCents": 100, "currency": "USD" });
    let operations = [
        (create_model(), json!({ "id": "fox", "i": fox(2) })),
        (update_model(), json!({ "id": "synth-video", "i": fox(2) })),
        (create_product(), json!({ "i": product })),
        (update_product(), json!({ "id": "starter", "i": product })),
        ("{ catalogModels { id } }".to_owned(), json!({})),
        ("{ catalogProducts { id } }".to_owned(), json!({})),
        ("{ models { id backend } }".to_owned(), json!({})),
        ("{ products { id stripePriceId } }".to_owned(), json!({})),
    ];
    let res = app
        .gql(
            "mutation($s: [ApiKeyScope!]!) { createApiKey(name: \"ops\", scopes: $s) { secret } }",
            json!({ "s": ["READ", "GENERATE", "BILLING"] }),
            Some(&admin),
        )
        .await;
    let key = res["data"]["createApiKey"]["secret"].as_str().unwrap_or_else(|| panic!("{res}")).to_owned();
    for (op, vars) in &operations {
        assert_eq!(code(&app.gql(op, vars.clone(), Some(&user)).await), "FORBIDDEN", "user: {op}");
        assert_eq!(code(&app.gql(op, vars.clone(), Some(&key)).await), "FORBIDDEN", "admin's key: {op}");
    }
    assert_eq!(
        code(&app.gql(&create_model(), json!({ "id": "fox", "i": fox(2) }), None).await),
        "UNAUTHENTICATED"
    );
    assert_eq!(app.count("render_models").await, 4, "nothing was created");
    // Users still see what is for sale.
    let res = app.gql("{ models { id name } products { id name } }", json!({}), Some(&user)).await;
    assert!(res.get("errors").is_none(), "{res}");
    let res = app.gql("{ models { id backend workflow } }", json!({}), Some(&admin)).await;
    assert_eq!(
        res["data"]["models"][0],
        json!({ "id": "synth-video", "backend": "SYNTHETIC", "workflow": "text-to-video" }),
        "{res}"
    );
}

/// A Replicate model's template is read from the configured folder: it
/// must use `{{image}}` when the model takes an image, and only then.
#[tokio::test(flavor = "multi_thread")]
async fn replicate_templates_must_carry_the_inputs_of_their_model() {
    let templates = tempfile::tempdir().expect("templates");
    let write = |name: &str, body: Value| {
        std::fs::write(templates.path().join(format!("{name}.json")), body.to_string()).expect("write")
    };
    write(
        "t2v",
        json!({ "model": "acme/video", "input": { "prompt": "{{prompt}}", "seconds": "{{duration_seconds}}" } }),
    );
    write(
        "i2v",
        json!({ "model": "acme/video", "input": { "prompt": "{{prompt}}", "start_image": "{{image}}" } }),
    );
    std::fs::write(templates.path().join("broken.json"), "{\"model\": ").expect("write");
    let dir = templates.path().to_path_buf();
    let app = TestApp::start_with(|s| {
        s.backends.replicate = Some(mage_domain::backends::ReplicateSettings {
            api_base: mage_domain::backends::DEFAULT_REPLICATE_API_BASE.into(),
            token: None,
            webhook_secret: None,
            webhooks: false,
            workflows: dir,
        });
    })
    .await;
    let (admin, _) = admin_and_user(&app).await;
    let replicate = |workflow: &str, inputs: Value| {
        fox(2).tap(|m| {
            m["backend"] = json!("REPLICATE");
            m["workflow"] = json!(workflow);
            m["inputs"] = inputs;
        })
    };
    for (workflow, inputs, expected) in [
        ("t2v", json!(["IMAGE"]), "workflow"),
        ("i2v", json!([]), "inputs"),
        ("broken", json!([]), "workflow"),
        ("missing", json!([]), "workflow"),
        ("text-to-video", json!([]), "workflow"),
    ] {
        let res = app
            .gql(&create_model(), json!({ "id": "acme", "i": replicate(workflow, inputs) }), Some(&admin))
            .await;
        assert_eq!(field(&res), expected, "{workflow}: {res}");
    }
    let res = app
        .gql(&create_model(), json!({ "id": "acme", "i": replicate("i2v", json!(["IMAGE"])) }), Some(&admin))
        .await;
    assert_eq!(res["data"]["createModel"]["backend"], "REPLICATE", "{res}");
    assert_eq!(res["data"]["createModel"]["inputs"], json!(["IMAGE"]), "{res}");
    // This deployment does not offer Replicate: kept, but not sold.
    let input = json!({ "model": "acme", "prompt": "x", "resolution": "R480P", "durationSeconds": 2 });
    assert_eq!(code(&app.gql(QUOTE, json!({ "i": input }), None).await), "BAD_USER_INPUT");
    let res = app.gql("{ catalogModels { id backend } }", json!({}), Some(&admin)).await;
    assert!(
        res["data"]["catalogModels"]
            .as_array()
            .expect("models")
            .contains(&json!({ "id": "acme", "backend": "REPLICATE" })),
        "{res}"
    );
    // Moved to a template without the image the model takes: refused.
    let res = app
        .gql(&update_model(), json!({ "id": "acme", "i": replicate("t2v", json!(["IMAGE"])) }), Some(&admin))
        .await;
    assert_eq!(field(&res), "workflow");
}

#[tokio::test(flavor = "multi_thread")]
async fn admins_sell_new_products_and_change_them_at_once() {
    // Checkout without Stripe: `mage dev`'s local checkout page.
    let app = TestApp::start_with(|s| s.dev_mode = true).await;
    let (admin, user) = admin_and_user(&app).await;
    let pack = json!({ "name": "Winter pack", "kind": "PACK", "credits": 300, "priceCents": 1200, "currency": "eur", "sortOrder": 4 });
    let res = app.gql(&create_product(), json!({ "i": pack }), Some(&admin)).await;
    assert_eq!(
        res["data"]["createProduct"],
        json!({ "id": "winter-pack", "name": "Winter pack", "kind": "PACK", "credits": 300, "priceCents": 1200,
                "currency": "EUR", "stripePriceId": null, "active": true, "sortOrder": 4 }),
        "{res}"
    );
    let res = app.gql(&create_product(), json!({ "i": pack }), Some(&admin)).await;
    assert_eq!(res["data"]["createProduct"]["id"], "winter-pack-2", "{res}");
    let stored: i64 = crate::support::scalar_i64(
        &mut *app.conn().await,
        "SELECT count(*) AS n FROM products WHERE id = 'winter-pack' AND currency = 'eur'",
    )
    .await;
    assert_eq!(stored, 1, "currencies are stored lower case");

    // A new price is what the next buyer pays.
    let cheaper = pack.clone().tap(|p| p["priceCents"] = json!(900));
    let res = app.gql(&update_product(), json!({ "id": "winter-pack", "i": cheaper }), Some(&admin)).await;
    assert_eq!(res["data"]["updateProduct"]["priceCents"], 900, "{res}");
    let res = app.gql("{ products { id priceCents } }", json!({}), Some(&user)).await;
    assert!(
        res["data"]["products"]
            .as_array()
            .expect("products")
            .contains(&json!({ "id": "winter-pack", "priceCents": 900 })),
        "{res}"
    );
    let res = app
        .gql(
            "mutation { createCheckout(productId: \"winter-pack\") { order { totalCents currency } } }",
            json!({}),
            Some(&user),
        )
        .await;
    assert_eq!(
        res["data"]["createCheckout"]["order"],
        json!({ "totalCents": 900, "currency": "EUR" }),
        "{res}"
    );

    // Off sale: hidden, not sold, still listed for admins.
    let off = cheaper.clone().tap(|p| p["active"] = json!(false));
    app.gql(&update_product(), json!({ "id": "winter-pack", "i": off }), Some(&admin)).await;
    let res = app.gql("{ products { id } }", json!({}), None).await;
    assert!(
        !res["data"]["products"].as_array().expect("products").contains(&json!({ "id": "winter-pack" })),
        "{res}"
    );
    let res = app
        .gql("mutation { createCheckout(productId: \"winter-pack\") { url } }", json!({}), Some(&user))
        .await;
    assert_eq!(code(&res), "NOT_FOUND", "{res}");
    let res = app.gql("{ catalogProducts { id active } }", json!({}), Some(&admin)).await;
    assert!(
        res["data"]["catalogProducts"]
            .as_array()
            .expect("all")
            .contains(&json!({ "id": "winter-pack", "active": false })),
        "{res}"
    );

    // Plans need their own Stripe price.
    let plan = json!({ "name": "Team plan", "kind": "PLAN", "credits": 9000, "priceCents": 9900, "currency": "USD" });
    assert_eq!(field(&app.gql(&create_product(), json!({ "i": plan }), Some(&admin)).await), "stripePriceId");
    let taken = plan.clone().tap(|p| p["stripePriceId"] = json!("price_mage_basic_monthly"));
    assert_eq!(code(&app.gql(&create_product(), json!({ "i": taken }), Some(&admin)).await), "CONFLICT");
    let team = plan.clone().tap(|p| p["stripePriceId"] = json!("price_team_monthly"));
    let res = app.gql(&create_product(), json!({ "i": team }), Some(&admin)).await;
    assert_eq!(res["data"]["createProduct"]["stripePriceId"], "price_team_monthly", "{res}");
    for (input, expected) in [
        (pack.clone().tap(|p| p["credits"] = json!(0)), "credits"),
        (pack.clone().tap(|p| p["priceCents"] = json!(0)), "priceCents"),
        (pack.clone().tap(|p| p["currency"] = json!("euro")), "currency"),
        (pack.clone().tap(|p| p["name"] = json!("")), "name"),
        (pack.clone().tap(|p| p["stripePriceId"] = json!("price_x")), "stripePriceId"),
    ] {
        let res = app.gql(&update_product(), json!({ "id": "winter-pack", "i": input }), Some(&admin)).await;
        assert_eq!(field(&res), expected, "{res}");
    }
    let res = app.gql(&update_product(), json!({ "id": "no-such-product", "i": pack }), Some(&admin)).await;
    assert_eq!(code(&res), "NOT_FOUND", "{res}");

    // A plan that subscriptions renew keeps its Stripe price.
    let user_id = app.gql("{ me { id } }", json!({}), Some(&user)).await["data"]["me"]["id"].clone();
    app.sql(&format!(
        "INSERT INTO subscriptions (id, user_id, product_id, status) VALUES ('sub_1', '{}', 'basic', 'active')",
        user_id.as_str().expect("id")
    ))
    .await;
    let basic = json!({ "name": "Basic plan (monthly)", "kind": "PLAN", "credits": 1000, "priceCents": 1000,
        "currency": "USD", "stripePriceId": "price_mage_basic_v2" });
    assert_eq!(
        code(&app.gql(&update_product(), json!({ "id": "basic", "i": basic }), Some(&admin)).await),
        "CONFLICT"
    );
    let renamed = basic.clone().tap(|p| {
        p["stripePriceId"] = json!("price_mage_basic_monthly");
        p["name"] = json!("Basic");
    });
    let res = app.gql(&update_product(), json!({ "id": "basic", "i": renamed }), Some(&admin)).await;
    assert_eq!(res["data"]["updateProduct"]["name"], "Basic", "{res}");
    assert_eq!(res["data"]["updateProduct"]["sortOrder"], 10, "an omitted sortOrder keeps the place: {res}");
}
