//! Everything that only runs on the server (feature `ssr`).

pub mod admission;
pub mod assets;
pub mod auth;
pub mod broker;
pub mod chat;
pub mod config;
pub mod feed;
pub mod forwarded;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod notify;
pub mod security;
pub mod shutdown;
pub mod stats;
pub mod text;
