//! facegate: door-access face recognition. The modules follow the data path of one frame:
//! frame → vision (detect, align, embed) → gallery → decision → door, audit, snapshots;
//! `http`, `service` and `daemon` are the edges that carry frames in and answers out.

pub mod admin;
pub mod audit;
pub mod config;
pub mod daemon;
pub mod decision;
pub mod door;
pub mod enrollment;
pub mod events;
pub mod frame;
pub mod gallery;
pub mod http;
pub mod metrics;
pub mod models;
pub mod ratelimit;
pub mod recognition;
pub mod service;
pub mod snapshots;
pub mod vision;
