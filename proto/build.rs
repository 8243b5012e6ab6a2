//! Generates the tonic/prost code for `proto/shoal.proto` with a vendored protoc,
//! so that a machine without `protoc` builds the workspace. `PROTOC` is deliberately
//! not read from the environment: raft-proto's build rejects the vendored version.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut cfg = prost_build::Config::new();
    cfg.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Messages that carry secret values get a hand-written Debug that shows no
    // data (src/redact.rs), so no log line can print a secret.
    cfg.skip_debug([
        ".shoal.v1.SecretSpec",
        ".shoal.v1.Payload",
        ".shoal.v1.JoinClusterResponse",
    ]);
    // A store object's variants are boxed: a `Change` carries two objects,
    // and inline the largest variant (a Service) made each 3 KB, copied on
    // every move through apply, the change batches and their vectors.
    for kind in ["node", "service", "task", "cluster", "secret", "config"] {
        cfg.boxed(format!(".shoal.v1.StoreObject.object.{kind}"));
    }
    tonic_prost_build::configure().compile_with_config(cfg, &["proto/shoal.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/shoal.proto");
    Ok(())
}
