//! facegate: door-access face recognition. The modules follow the data path of one frame:
//! frame → vision (detect, align, embed) → gallery → decision → door, audit, snapshots.

pub mod config;
pub mod daemon;
pub mod decision;
pub mod enrollment;
pub mod frame;
pub mod gallery;
pub mod models;
pub mod recognition;
pub mod vision;
