//! facegate: door-access face recognition. The modules follow the data path of one request:
//! http (transport) → service → body → frame (checked image) → vision (detect, align, embed) →
//! gallery (match) → decision (pure) → record → answer, then door, audit, events, snapshots;
//! `daemon` and the binary's `cli` wire them together.

pub mod admin;
pub mod atomic_file;
pub mod audit;
pub mod body;
pub mod codes;
pub mod config;
pub mod confirmation;
pub mod daemon;
pub mod decision;
pub mod door;
pub mod enrollment;
pub mod events;
pub mod frame;
pub mod front;
#[doc(hidden)]
pub mod fuzzing;
pub mod gallery;
pub mod gallery_bundle;
pub mod host;
pub mod http;
pub mod kiosk;
pub mod logging;
pub mod metrics;
pub mod models;
pub mod mqtt;
pub mod permission;
pub mod ratelimit;
pub mod recognition;
pub mod record;
pub mod service;
pub mod snapshots;
pub mod state_file;
#[cfg(test)]
mod stuck_file;
pub mod sync;
pub mod tablets;
pub mod vision;
