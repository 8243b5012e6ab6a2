//! A task's spec, shared between the objects that carry it.
//!
//! Every task of a service carries its service's task spec, and every
//! version of a task (one per state it reports) carries the same spec as the
//! last. Held inline, the spec was 528 of a `Task`'s 872 bytes, and each
//! task and version had its own deep copy of the image, the command and the
//! environment. [`SharedTaskSpec`] is the spec behind an `Arc`: cloning a task
//! or deriving a task from its service copies a pointer, and writing to one
//! copy (`DerefMut`) unshares it first, so each holder still sees a value of
//! its own.
//!
//! The wire format is the schema's `TaskSpec` message, unchanged: the build
//! maps `.shoal.v1.TaskSpec` to [`SharedTaskSpec`], so prost generates no
//! struct for it, and [`TaskSpec`] is written here instead. The build checks
//! that its fields are the schema's (proto/build.rs).

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use prost::bytes::{Buf, BufMut};
use prost::encoding::{DecodeContext, WireType};

use crate::v1::{ContainerSpec, Placement, ResourceRequirements, RestartPolicy};

/// The schema's `TaskSpec` message: what to run, with what resources, how to
/// restart it and where to place it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TaskSpec {
    #[prost(message, optional, tag = "1")]
    pub container: Option<ContainerSpec>,
    #[prost(message, optional, tag = "2")]
    pub resources: Option<ResourceRequirements>,
    #[prost(message, optional, tag = "3")]
    pub restart: Option<RestartPolicy>,
    #[prost(message, optional, tag = "4")]
    pub placement: Option<Placement>,
}

impl TaskSpec {
    /// A spec that runs `image`, every other field at its default.
    pub fn for_image(image: impl Into<String>) -> TaskSpec {
        TaskSpec {
            container: Some(ContainerSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The image it runs ("" when it names no container).
    pub fn image(&self) -> &str {
        self.container.as_ref().map_or("", |c| c.image.as_str())
    }
}

/// A [`TaskSpec`] that clones by reference count and unshares on write.
#[derive(Clone, Default)]
pub struct SharedTaskSpec(Arc<TaskSpec>);

impl SharedTaskSpec {
    /// True when both hold the very same spec (not merely equal ones).
    pub fn same(&self, other: &SharedTaskSpec) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// True when nothing else holds this spec.
    pub fn is_unique(&self) -> bool {
        Arc::strong_count(&self.0) == 1
    }

    /// The spec itself, copied only if it is shared.
    pub fn into_inner(self) -> TaskSpec {
        Arc::unwrap_or_clone(self.0)
    }
}

impl From<TaskSpec> for SharedTaskSpec {
    fn from(spec: TaskSpec) -> Self {
        SharedTaskSpec(Arc::new(spec))
    }
}

impl Deref for SharedTaskSpec {
    type Target = TaskSpec;

    fn deref(&self) -> &TaskSpec {
        &self.0
    }
}

impl DerefMut for SharedTaskSpec {
    /// Unshares the spec first: the other holders keep the value they had.
    fn deref_mut(&mut self) -> &mut TaskSpec {
        Arc::make_mut(&mut self.0)
    }
}

impl PartialEq for SharedTaskSpec {
    fn eq(&self, other: &Self) -> bool {
        self.same(other) || *self.0 == *other.0
    }
}

impl fmt::Debug for SharedTaskSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl prost::Message for SharedTaskSpec {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        self.0.encode_raw(buf)
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        Arc::make_mut(&mut self.0).merge_field(tag, wire_type, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.encoded_len()
    }

    fn clear(&mut self) {
        *self = SharedTaskSpec::default();
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::v1::{ServiceSpec, Task};

    fn spec(image: &str) -> TaskSpec {
        TaskSpec {
            container: Some(ContainerSpec {
                image: image.into(),
                env: vec!["A=1".into()],
                ..Default::default()
            }),
            restart: Some(RestartPolicy {
                max_attempts: 3,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_task_cloned_or_derived_from_its_service_shares_the_spec() {
        let service = ServiceSpec {
            task: Some(spec("web:1").into()),
            ..Default::default()
        };
        let task = Task {
            spec: service.task.clone(),
            ..Default::default()
        };
        let copy = task.clone();
        let (a, b, c) = (
            service.task.as_ref().unwrap(),
            task.spec.as_ref().unwrap(),
            copy.spec.as_ref().unwrap(),
        );
        assert!(a.same(b) && b.same(c));
        assert!(!a.is_unique());
        assert!(SharedTaskSpec::from(spec("web:1")).is_unique());
    }

    #[test]
    fn writing_to_a_shared_spec_leaves_the_other_holders_as_they_were() {
        let first = Task {
            spec: Some(spec("web:1").into()),
            ..Default::default()
        };
        let mut second = first.clone();
        let container = second.spec.as_mut().unwrap().container.as_mut().unwrap();
        container.image = "web:2".into();
        let (a, b) = (first.spec.unwrap(), second.spec.unwrap());
        assert_eq!((a.image(), b.image()), ("web:1", "web:2"));
        assert!(!a.same(&b));
    }

    #[test]
    fn equal_specs_compare_equal_shared_or_not() {
        let a: SharedTaskSpec = spec("web:1").into();
        let b: SharedTaskSpec = spec("web:1").into();
        let c: SharedTaskSpec = spec("web:2").into();
        assert!(!a.same(&b));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, a.clone());
    }

    #[test]
    fn the_wire_format_is_the_plain_message() {
        let plain = spec("web:1");
        let shared: SharedTaskSpec = plain.clone().into();
        assert_eq!(shared.encode_to_vec(), plain.encode_to_vec());
        let task = Task {
            id: "t1".into(),
            spec: Some(shared),
            ..Default::default()
        };
        let decoded = Task::decode(&task.encode_to_vec()[..]).unwrap();
        assert_eq!(decoded, task);
        assert_eq!(decoded.spec.unwrap().into_inner(), plain);
        let mut cleared = task.spec.clone().unwrap();
        cleared.clear();
        assert_eq!(cleared.into_inner(), TaskSpec::default());
    }
}
