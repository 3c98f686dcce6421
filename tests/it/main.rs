//! Mage's end-to-end tests, in one binary: the whole stack is linked once,
//! not once per area. nextest still runs each test in a process of its own;
//! select an area by its module, e.g. `scripts/test -E 'test(/^payments::/)'`.

mod accounts;
mod admin;
mod apq;
mod assets;
mod backends;
mod catalog;
mod cli;
mod deletion;
mod edge;
mod generations;
mod ingest;
mod inputs;
mod limits;
mod mail;
mod media;
mod metrics;
mod payments;
mod playground;
mod queue;
mod recovery;
mod replicate;
mod s3;
mod schema;
mod sessions;
mod stats;
mod subscriptions;
mod support;
mod web;
mod webhooks;
mod websocket;
