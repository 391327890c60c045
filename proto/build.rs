//! Generates the Rust code for `proto/ordo/v1/*.proto` in pure Rust: protox parses the
//! files (no system `protoc`), tonic-prost-build writes messages, clients and servers.
//! The encoded descriptor set is written too, for gRPC server reflection.

use std::{env, fs, path::PathBuf};

const PROTO_FILES: &[&str] = &[
    "ordo/v1/ordo.proto",
    "ordo/v1/admin.proto",
    "ordo/internal/v1/raft.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=ordo");
    let mut compiler = protox::Compiler::new(["."])?;
    compiler.include_imports(true).include_source_info(true);
    for file in PROTO_FILES {
        compiler.open_file(file)?;
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("ordo_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
