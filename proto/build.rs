//! Generates the Rust types and tonic stubs from `drover/v1/*.proto`. protoc comes from the
//! vendored crate, so a fresh machine needs no system install.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure().compile_protos(&["drover/v1/drover.proto"], &["."])?;
    println!("cargo:rerun-if-changed=drover");
    Ok(())
}
