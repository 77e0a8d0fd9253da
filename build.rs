//! No build step: this file exists so that `[build-dependencies]` in Cargo.toml takes part in
//! feature resolution (see the comment there: it keeps one build of syn 3 for the CLI and the
//! Python package).

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
}
