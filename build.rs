//! Embeds every file under `public/` into the binary, so the server runs from any directory.
//! Writes `$OUT_DIR/assets.rs`: a table of (URL path, bytes, ETag), the ETag a hash of the bytes.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// FNV-1a, 64 bit: stable across builds and toolchains, unlike `DefaultHasher`.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let public = root.join("public");
    println!("cargo:rerun-if-changed=public");
    let mut files = Vec::new();
    walk(&public, &mut files);
    files.sort();
    let mut code = String::from("&[\n");
    for file in files {
        let rel = file.strip_prefix(&public).expect("under public/");
        let url = format!("/{}", rel.to_string_lossy().replace('\\', "/"));
        let bytes = std::fs::read(&file).expect("readable asset");
        println!("cargo:rerun-if-changed={}", file.display());
        writeln!(
            code,
            "    ({url:?}, include_bytes!({:?}), \"\\\"{:016x}\\\"\"),",
            file.display().to_string(),
            fnv1a(&bytes)
        )
        .expect("write to string");
    }
    code.push(']');
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it")).join("assets.rs");
    std::fs::write(out, code).expect("write assets.rs");
}
