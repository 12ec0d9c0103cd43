//! One component per page.

pub mod chat;
pub mod feed;
pub mod rooms;
