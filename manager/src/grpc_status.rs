//! The one place where store and lookup errors become gRPC statuses.

use tonic::Status;

use crate::store::{LookupError, StoreError};

/// Map a refused write to the gRPC code a client can act on.
pub fn store_status(err: StoreError) -> Status {
    let msg = err.to_string();
    match err {
        StoreError::NotFound { .. } => Status::not_found(msg),
        StoreError::AlreadyExists { .. } => Status::already_exists(msg),
        StoreError::PortInUse { .. } => Status::already_exists(format!("publish: {msg}")),
        StoreError::Conflict { .. } | StoreError::StaleReport { .. } => Status::aborted(msg),
        StoreError::InUse { .. } => Status::failed_precondition(msg),
        StoreError::Invalid(_) => Status::invalid_argument(msg),
        StoreError::NotLeader
        | StoreError::LeadershipLost
        | StoreError::NoQuorum
        | StoreError::Stopped => Status::unavailable(msg),
        StoreError::Storage(_) => Status::internal(msg),
        // Not `unavailable`: clients retry that at once, and this lasts
        // until someone frees space.
        StoreError::NoSpace { .. } => Status::resource_exhausted(msg),
    }
}

/// Map a failed lookup by id, prefix or name.
pub fn lookup_status(err: LookupError) -> Status {
    let msg = err.to_string();
    match err {
        LookupError::NotFound { .. } => Status::not_found(msg),
        LookupError::Ambiguous { .. } => Status::invalid_argument(msg),
    }
}

/// A spec refused by validation: the message names the field.
pub fn spec_status(err: shoal_proto::validate::SpecError) -> Status {
    Status::invalid_argument(err.to_string())
}
