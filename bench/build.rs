//! Tells the per-call benchmark where cargo puts `hlr-fixture`'s dylib for hot-lib-reloader
//! to load: `<target>/<profile>/deps`, derived from this build's `OUT_DIR`
//! (`<target>/<profile>/build/hmr-bench-<hash>/out`), so `CARGO_TARGET_DIR` is respected.

fn main() {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let profile_dir = out.ancestors().nth(3).expect("OUT_DIR is four levels deep");
    println!(
        "cargo:rustc-env=HLR_LIB_DIR={}",
        profile_dir.join("deps").display()
    );
    println!("cargo:rerun-if-changed=build.rs");
}
