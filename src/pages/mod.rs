//! One component per page.

pub mod feed;
