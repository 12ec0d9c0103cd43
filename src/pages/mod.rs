//! One component per page.

pub mod chat;
pub mod dashboard;
pub mod feed;
pub mod rooms;
pub mod split;
