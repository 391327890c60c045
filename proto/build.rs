//! Generates the Rust code for `proto/ordo/v1/*.proto` in pure Rust: protox parses the
//! files (no system `protoc`), tonic-prost-build writes messages, clients and servers.
//! The encoded descriptor set of the public files (`ordo.v1`) is written too, for gRPC server
//! reflection on the client port; the internal package is never offered there.

use std::{env, fs, path::PathBuf};

const PUBLIC_FILES: &[&str] = &["ordo/v1/ordo.proto", "ordo/v1/admin.proto"];
const INTERNAL_FILES: &[&str] = &["ordo/internal/v1/raft.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=ordo");
    let mut public = protox::Compiler::new(["."])?;
    public.include_imports(true).include_source_info(true);
    for file in PUBLIC_FILES {
        public.open_file(file)?;
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("ordo_descriptor.bin"),
        public.encode_file_descriptor_set(),
    )?;
    let mut compiler = protox::Compiler::new(["."])?;
    compiler.include_imports(true).include_source_info(true);
    for file in PUBLIC_FILES.iter().chain(INTERNAL_FILES) {
        compiler.open_file(file)?;
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
