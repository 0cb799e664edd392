//! Compiles proto/kiln/v1 with protox (no protoc binary) and generates tonic's client and
//! server.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = root.join("kiln/v1/build.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], [&root])?;
    tonic_prost_build::configure()
        // Map fields in a fixed order, so an encoded request is the same bytes every time.
        .btree_map(".")
        .compile_fds(fds)?;
    Ok(())
}
