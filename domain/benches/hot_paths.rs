//! Micro-benchmarks of the domain's hot pure functions: pricing a
//! generation request (every `createGeneration` and `quote`) and verifying a
//! Stripe webhook signature (every `POST /webhooks/stripe`).
//!
//! `cargo bench -p mage-domain --bench hot_paths`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mage_domain::catalog::{self, GenerationInput, MediaKind, Price, RenderModel, Resolution};
use mage_domain::payments::signature;

fn video_model() -> RenderModel {
    RenderModel {
        id: "synth-video".into(),
        kind: MediaKind::Video,
        name: "Synthetic video".into(),
        backend: catalog::BackendKind::Synthetic,
        workflow: "text-to-video".into(),
        max_duration_seconds: Some(10),
        default_duration_seconds: Some(5),
        fps: 24,
        render_timeout_seconds: None,
        max_attempts: None,
        inputs: Vec::new(),
        prices: vec![
            Price { resolution: Resolution::R480p, credits: 2, credits_per_second: 2 },
            Price { resolution: Resolution::R720p, credits: 4, credits_per_second: 4 },
            Price { resolution: Resolution::R1080p, credits: 8, credits_per_second: 8 },
        ],
        active: true,
        sort_order: 0,
    }
}

fn pricing(c: &mut Criterion) {
    let model = video_model();
    // A prompt of typical length (about 300 characters, some of them not ASCII).
    let prompt = "A slow dolly shot through a rain-soaked neon alley at night, reflections \
                  rippling in puddles, steam rising from grates, a lone figure in a yellow \
                  raincoat walking away from the camera, cinematic lighting, shallow depth of \
                  field, 35 mm film grain — photorealistic, ultra detailed, moody atmosphere"
        .to_owned();
    let input = GenerationInput {
        model: model.id.clone(),
        prompt,
        negative_prompt: Some("blurry, low quality, watermark".into()),
        resolution: "1080p".into(),
        duration_seconds: Some(8),
        seed: Some(42),
        inputs: Vec::new(),
    };
    assert!(catalog::price(Some(model.clone()), &input).is_ok(), "the benchmark input must be valid");
    let mut group = c.benchmark_group("pricing");
    group.bench_function("price_video_1080p", |b| {
        b.iter(|| catalog::price(black_box(Some(model.clone())), black_box(&input)))
    });
    let mut bad = input.clone();
    bad.duration_seconds = Some(60);
    group.bench_function("price_rejected_duration", |b| {
        b.iter(|| catalog::price(black_box(Some(model.clone())), black_box(&bad)))
    });
    group.finish();
}

/// A `checkout.session.completed` event of realistic size (~2 KiB).
fn stripe_event() -> Vec<u8> {
    let mut body = String::from(
        r#"{"id":"evt_1QxYzAbCdEfGhIjKlMnOpQrS","object":"event","api_version":"2025-03-31.basil","created":1767225600,"type":"checkout.session.completed","livemode":false,"pending_webhooks":1,"request":{"id":null,"idempotency_key":null},"data":{"object":{"id":"cs_test_a1B2c3D4e5F6g7H8i9J0","object":"checkout.session","amount_subtotal":1999,"amount_total":1999,"client_reference_id":"0193f1c2-7a4e-7b8c-9d0e-1f2a3b4c5d6e","currency":"usd","customer":"cus_RkLmNoPqRsTuVw","customer_details":{"email":"someone@example.com","name":"Some One","address":{"city":null,"country":"FR","line1":null,"line2":null,"postal_code":null,"state":null},"tax_exempt":"none","tax_ids":[]},"metadata":{"order_id":"0193f1c2-7a4e-7b8c-9d0e-1f2a3b4c5d6e"},"mode":"payment","payment_intent":"pi_3QxYzAbCdEfGhIjK0abcdefg","payment_status":"paid","status":"complete","success_url":"https://app.example.com/credits?order=0193f1c2","cancel_url":"https://app.example.com/credits","#,
    );
    // Pad with the kind of fields Stripe adds, to about 2 KiB.
    while body.len() < 2000 {
        body.push_str(r#""automatic_tax":{"enabled":false,"liability":null,"status":null},"#);
    }
    body.push_str(r#""expires_at":1767312000}}}"#);
    body.into_bytes()
}

fn signatures(c: &mut Criterion) {
    const SECRET: &str = "whsec_0123456789abcdefghijklmnopqrstuv";
    let now = 1_767_225_600;
    let body = stripe_event();
    let header = signature::sign(&body, SECRET, now);
    assert_eq!(signature::verify(&body, Some(&header), SECRET, now), Ok(()));
    // While a secret is rolled Stripe sends one v1 per active secret; the
    // matching one last is the slowest valid case.
    let other = signature::sign(&body, "whsec_previous_secret_being_rolled", now);
    let v1 = |h: &str| h.split_once(",v1=").map(|(_, s)| s.to_owned()).unwrap_or_default();
    let rolled = format!("t={now},v1={},v1={}", v1(&other), v1(&header));
    let forged = format!("t={now},v1={}", "0".repeat(64));

    let mut group = c.benchmark_group("stripe_signature");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("verify_2KiB", |b| {
        b.iter(|| signature::verify(black_box(&body), black_box(Some(&header)), SECRET, now))
    });
    group.bench_function("verify_2KiB_two_secrets", |b| {
        b.iter(|| signature::verify(black_box(&body), black_box(Some(&rolled)), SECRET, now))
    });
    group.bench_function("reject_forged_2KiB", |b| {
        b.iter(|| signature::verify(black_box(&body), black_box(Some(&forged)), SECRET, now))
    });
    group.finish();
}

criterion_group!(benches, pricing, signatures);
criterion_main!(benches);
