//! One overall percentage and a stage name from ComfyUI's per-node events.
//!
//! ComfyUI reports which node runs (`executing`) and, for samplers, steps
//! within it (`progress {value, max, node}`); it never says how far the
//! whole graph is. Nodes are weighted by what they usually cost (sampling
//! dominates, decoding a video is next), only nodes an output depends on
//! count (ComfyUI runs nothing else), and the result never goes down and
//! stays below 100 until the job has really finished.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

pub fn is_output_class(class: &str) -> bool {
    class.starts_with("Save") || class == "VHS_VideoCombine" || class == "PreviewImage"
}

fn weight(class: &str) -> f64 {
    if class.contains("Sampler") {
        20.0
    } else if class.starts_with("VAEDecode") {
        3.0
    } else if is_output_class(class) {
        2.0
    } else if class.contains("Loader") {
        1.0
    } else {
        0.25
    }
}

fn stage(class: &str) -> &'static str {
    if class.contains("Sampler") {
        "sampling"
    } else if class.starts_with("VAEDecode") {
        "decoding"
    } else if is_output_class(class) {
        "saving"
    } else if class.contains("Loader") {
        "loading models"
    } else if class.contains("TextEncode") {
        "encoding prompt"
    } else {
        "preparing"
    }
}

#[derive(Debug, Clone)]
pub struct Tracker {
    class: HashMap<String, String>,
    weight: HashMap<String, f64>,
    total: f64,
    done: HashSet<String>,
    current: Option<(String, f64)>,
    last: u8,
    stage: &'static str,
}

impl Tracker {
    /// From an API-format graph. An empty or unreadable graph still gives a
    /// tracker; it then moves only on sampler steps.
    pub fn new(graph: &Value) -> Self {
        let mut class = HashMap::new();
        let mut inputs: HashMap<String, Vec<String>> = HashMap::new();
        if let Some(nodes) = graph.as_object() {
            for (id, node) in nodes {
                let c = node.get("class_type").and_then(Value::as_str).unwrap_or_default();
                class.insert(id.clone(), c.to_owned());
                let links = node
                    .get("inputs")
                    .and_then(Value::as_object)
                    .map(|m| {
                        m.values()
                            .filter_map(|v| match v.as_array().map(Vec::as_slice) {
                                Some([Value::String(from), Value::Number(_)]) => Some(from.clone()),
                                _ => None,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                inputs.insert(id.clone(), links);
            }
        }
        // What an output depends on, walking the links back.
        let mut reachable = HashSet::new();
        let mut todo: Vec<String> =
            class.iter().filter(|(_, c)| is_output_class(c)).map(|(id, _)| id.clone()).collect();
        if todo.is_empty() {
            todo = class.keys().cloned().collect();
        }
        while let Some(id) = todo.pop() {
            if reachable.insert(id.clone()) {
                todo.extend(inputs.get(&id).into_iter().flatten().cloned());
            }
        }
        let weight: HashMap<String, f64> = reachable
            .iter()
            .map(|id| (id.clone(), weight(class.get(id).map(String::as_str).unwrap_or_default())))
            .collect();
        let total = weight.values().sum();
        Self { class, weight, total, done: HashSet::new(), current: None, last: 0, stage: "queued" }
    }

    pub fn stage(&self) -> &'static str {
        self.stage
    }

    pub fn percent(&self) -> u8 {
        self.last
    }

    /// `execution_start`: the job left ComfyUI's queue.
    pub fn started(&mut self) {
        self.stage = "starting";
    }

    /// `execution_cached`: these nodes' results were reused: already done.
    pub fn cached(&mut self, nodes: &[String]) {
        self.done.extend(nodes.iter().cloned());
        self.recompute();
    }

    /// `executing {node}`: the previous node finished, this one started.
    pub fn executing(&mut self, node: &str) {
        if let Some((prev, _)) = self.current.take() {
            self.done.insert(prev);
        }
        self.current = Some((node.to_owned(), 0.0));
        self.stage = stage(self.class.get(node).map(String::as_str).unwrap_or_default());
        self.recompute();
    }

    /// `progress {value, max, node}`.
    pub fn step(&mut self, node: Option<&str>, value: f64, max: f64) {
        let fraction = if max > 0.0 { (value / max).clamp(0.0, 1.0) } else { 0.0 };
        let node = node.map(str::to_owned).or_else(|| self.current.as_ref().map(|(n, _)| n.clone()));
        if let Some(node) = node {
            if self.current.as_ref().is_none_or(|(n, _)| *n != node) {
                self.executing(&node);
            }
            self.current = Some((node, fraction));
        }
        self.recompute();
    }

    /// `executed {node}`.
    pub fn executed(&mut self, node: &str) {
        self.done.insert(node.to_owned());
        if self.current.as_ref().is_some_and(|(n, _)| n == node) {
            self.current = None;
        }
        self.recompute();
    }

    fn recompute(&mut self) {
        let mut sum: f64 = self.done.iter().filter_map(|n| self.weight.get(n)).sum();
        if let Some((node, fraction)) = &self.current
            && !self.done.contains(node)
        {
            sum += self.weight.get(node).copied().unwrap_or(0.0) * fraction;
        }
        let percent = if self.total > 0.0 { (99.0 * sum / self.total).floor() as u8 } else { 0 };
        self.last = self.last.max(percent.min(99));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph() -> Value {
        serde_json::json!({
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {}},
            "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "x"}},
            "3": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "steps": 4}},
            "4": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["1", 2]}},
            "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0]}},
            "9": {"class_type": "CLIPTextEncode", "inputs": {"text": "unused"}}
        })
    }

    #[test]
    fn sampling_dominates_and_progress_never_goes_back_or_reaches_100() {
        let mut t = Tracker::new(&graph());
        t.started();
        let mut seen = vec![];
        for n in ["1", "2"] {
            t.executing(n);
            seen.push(t.percent());
        }
        assert_eq!(t.stage(), "encoding prompt");
        t.executing("3");
        for i in 1..=4 {
            t.step(Some("3"), f64::from(i), 4.0);
            seen.push(t.percent());
        }
        assert_eq!(t.stage(), "sampling");
        // Total weight 1 + 0.25 + 20 + 3 + 2 = 26.25; sampling ends at ~80 %.
        assert!((78..=82).contains(&t.percent()), "{}", t.percent());
        t.executing("4");
        t.executing("5");
        t.executed("5");
        seen.push(t.percent());
        assert_eq!(t.percent(), 99);
        // A late or repeated event never moves it back.
        t.step(Some("3"), 1.0, 4.0);
        seen.push(t.percent());
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    }

    #[test]
    fn cached_nodes_count_as_done_and_unknown_nodes_are_harmless() {
        let mut t = Tracker::new(&graph());
        t.cached(&["1".into(), "2".into()]);
        let after_cache = t.percent();
        assert!(after_cache > 0);
        t.executing("nope");
        t.step(None, 1.0, 0.0);
        assert_eq!(t.percent(), after_cache);
        let mut empty = Tracker::new(&Value::Null);
        empty.step(Some("3"), 2.0, 4.0);
        assert_eq!(empty.percent(), 0);
    }
}
