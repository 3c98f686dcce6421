//! Micro-benchmark of progress aggregation: the ComfyUI backend turns every
//! per-node event of a render into one overall percentage and stage
//! (`backend::comfyui::progress::Tracker`), on the worker's hot path while
//! a GPU renders.
//!
//! `cargo bench -p mage-jobs --bench progress`

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use mage_jobs::backend::comfyui::progress::Tracker;
use serde_json::Value;

/// The text-to-video workflow Mage ships (its placeholders are whole string
/// values, so the template is valid JSON as it is).
const WORKFLOW: &str = include_str!("../../workflows/comfyui/text-to-video.json");

/// Sampler steps of one render; ComfyUI sends one `progress` event per step.
const STEPS: u32 = 30;

/// Node ids in execution order, and the sampler's.
fn order(graph: &Value) -> (Vec<String>, String) {
    let nodes = graph.as_object().map(|m| m.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
    let class = |id: &str| graph[id]["class_type"].as_str().unwrap_or_default().to_owned();
    let rank = |id: &str| {
        let c = class(id);
        if c.contains("Loader") {
            0
        } else if c.contains("TextEncode") {
            1
        } else if c.contains("Sampler") {
            3
        } else if c.starts_with("VAEDecode") {
            4
        } else if c.starts_with("VHS") || c.starts_with("Save") {
            5
        } else {
            2
        }
    };
    let mut nodes = nodes;
    nodes.sort_by_key(|id| rank(id));
    let sampler = nodes.iter().find(|id| class(id).contains("Sampler")).cloned().unwrap_or_default();
    (nodes, sampler)
}

/// One whole render's events, as the backend feeds them.
fn run_events(t: &mut Tracker, nodes: &[String], sampler: &str) -> u8 {
    t.started();
    t.cached(&[]);
    for node in nodes {
        t.executing(node);
        if node == sampler {
            for step in 1..=STEPS {
                t.step(Some(node), f64::from(step), f64::from(STEPS));
            }
        }
    }
    for node in nodes {
        t.executed(node);
    }
    t.percent()
}

fn progress(c: &mut Criterion) {
    let graph: Value = serde_json::from_str(WORKFLOW).expect("the shipped workflow is JSON");
    let (nodes, sampler) = order(&graph);
    assert!(!sampler.is_empty(), "the workflow has a sampler");
    assert_eq!(run_events(&mut Tracker::new(&graph), &nodes, &sampler), 99);

    let mut group = c.benchmark_group("progress_aggregation");
    group.bench_function("tracker_new_text_to_video", |b| b.iter(|| Tracker::new(black_box(&graph))));
    group.bench_function("sampler_step", |b| {
        let mut t = Tracker::new(&graph);
        t.executing(&sampler);
        let mut i = 0u32;
        b.iter(|| {
            i = (i + 1) % STEPS;
            t.step(black_box(Some(sampler.as_str())), f64::from(i), f64::from(STEPS));
            t.percent()
        })
    });
    group.bench_function("whole_render_30_steps", |b| {
        b.iter_batched(
            || Tracker::new(&graph),
            |mut t| run_events(&mut t, black_box(&nodes), &sampler),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, progress);
criterion_main!(benches);
