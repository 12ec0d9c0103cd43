//! The server embeds `target/site` (src/server/assets.rs). rust-embed alone
//! notices only edits of files it already embedded, so a server compiled
//! before the front end was built would keep serving nothing: rebuild it
//! whenever the built site changes.
fn main() {
    if std::env::var_os("CARGO_FEATURE_SSR").is_some() {
        println!("cargo:rerun-if-changed=target/site");
    } else {
        println!("cargo:rerun-if-changed=build.rs");
    }
}
