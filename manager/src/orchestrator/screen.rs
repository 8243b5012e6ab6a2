//! The services the orchestrator leaves alone, and the mark that says why.
//!
//! A service is left alone while its stored spec breaks today's validation
//! rules (an older version stored it, or it was written around the API: a
//! billion replicas must not make the leader allocate a task each), and while
//! its spec is the one whose reconcile panicked (a bug must cost that service
//! only, not every service). Its running tasks run on; nothing is created,
//! replaced or removed for it. The mark is `Service.error`, written with the
//! version that was read, so it never overwrites a user's change; fixing the
//! spec (or, after a panic, any change to it) ends it, and the orchestrator
//! clears the mark on its next pass.

use std::collections::HashMap;

use shoal_proto::{Service, ServiceSpec};

use crate::store::{Action, Object};

/// The services whose reconcile panicked, with the spec it panicked on.
#[derive(Default)]
pub(super) struct Screen {
    quarantined: HashMap<String, ServiceSpec>,
}

impl Screen {
    /// Why `service` must not be reconciled, if it must not.
    pub(super) fn refusal(&mut self, service: &Service) -> Option<String> {
        let no_spec = ServiceSpec::default();
        let spec = service.spec.as_ref().unwrap_or(&no_spec);
        if let Err(err) = shoal_proto::validate::service_spec(spec) {
            return Some(format!(
                "the stored spec is not valid ({err}); nothing is done for this service until it is updated or removed"
            ));
        }
        match self.quarantined.get(&service.id) {
            Some(bad) if bad == spec => Some(service.error.clone()),
            Some(_) => {
                self.quarantined.remove(&service.id);
                None
            }
            None => None,
        }
    }

    /// Reconciling `service` as it is panicked: leave it alone until its
    /// spec changes.
    pub(super) fn quarantine(&mut self, service: &Service) {
        self.quarantined
            .insert(service.id.clone(), service.spec.clone().unwrap_or_default());
    }

    /// The service is gone.
    pub(super) fn forget(&mut self, service_id: &str) {
        self.quarantined.remove(service_id);
    }
}

/// The error a service is marked with after its reconcile panicked.
pub(super) fn panic_error(panic: &(dyn std::any::Any + Send)) -> String {
    format!(
        "the orchestrator failed on this service ({}); it is left alone until its spec changes",
        crate::panics::panic_message(panic)
    )
}

/// The write that sets (or, with `""`, clears) a service's error.
pub(super) fn mark(service: &Service, error: String) -> Action {
    let mut marked = service.clone();
    marked.error = error;
    Action::Update(Object::Service(marked.into()))
}
