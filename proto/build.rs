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
    // A task spec is shared between a service and its tasks, and between a
    // task's versions (src/task_spec.rs): the fields that hold one are a
    // `SharedTaskSpec`, and the message itself is written by hand there.
    cfg.extern_path(".shoal.v1.TaskSpec", "crate::task_spec::SharedTaskSpec");
    check_task_spec(&cfg.load_fds(&["proto/shoal.proto"], &["proto"])?)?;
    // Every call's buffers start small (src/codec.rs): idle streams held
    // tonic's 8 KiB ones by the tens of thousands.
    tonic_prost_build::configure()
        .codec_path("crate::codec::SmallCodec")
        .compile_with_config(cfg, &["proto/shoal.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/shoal.proto");
    Ok(())
}

/// The fields of the hand-written `TaskSpec` (src/task_spec.rs), by number: the
/// build stops when the schema's message no longer has exactly these.
const TASK_SPEC_FIELDS: [(&str, i32); 4] = [
    ("container", 1),
    ("resources", 2),
    ("restart", 3),
    ("placement", 4),
];

fn check_task_spec(fds: &prost_types::FileDescriptorSet) -> Result<(), Box<dyn std::error::Error>> {
    let message = fds
        .file
        .iter()
        .flat_map(|f| &f.message_type)
        .find(|m| m.name() == "TaskSpec")
        .ok_or("proto/shoal.proto has no message TaskSpec; src/task_spec.rs writes one")?;
    let fields: Vec<(&str, i32)> = message
        .field
        .iter()
        .map(|f| (f.name(), f.number()))
        .collect();
    if fields != TASK_SPEC_FIELDS {
        return Err(format!(
            "TaskSpec in proto/shoal.proto has the fields {fields:?}; the hand-written \
             struct in src/task_spec.rs has {TASK_SPEC_FIELDS:?}: change both together"
        )
        .into());
    }
    Ok(())
}
