//! The stored object kinds as one enum, and what every kind has in common
//! (id, meta, the key it lives under in sled).

use std::sync::Arc;

use shoal_proto::{Cluster, Config, Meta, Node, Secret, Service, Task};

pub use shoal_proto::store_object::Object;

/// The kind of a stored object, as users and error messages name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Node,
    Service,
    Task,
    Cluster,
    Secret,
    Config,
}

impl Kind {
    /// Every kind, in the order snapshots and the watch API list them.
    pub const ALL: [Kind; 6] = [
        Kind::Node,
        Kind::Service,
        Kind::Task,
        Kind::Cluster,
        Kind::Secret,
        Kind::Config,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Node => "node",
            Kind::Service => "service",
            Kind::Task => "task",
            Kind::Cluster => "cluster",
            Kind::Secret => "secret",
            Kind::Config => "config",
        }
    }

    /// Prefix of this kind's keys in the sled state tree.
    pub fn key_prefix(self) -> &'static [u8] {
        match self {
            Kind::Node => b"n/",
            Kind::Service => b"s/",
            Kind::Task => b"t/",
            Kind::Cluster => b"c/",
            Kind::Secret => b"x/",
            Kind::Config => b"g/",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Accessors every stored object has.
pub trait ObjectExt {
    fn kind(&self) -> Kind;
    fn id(&self) -> &str;
    fn meta(&self) -> Option<&Meta>;
    fn meta_mut(&mut self) -> &mut Meta;
    #[cfg(test)]
    /// The key under which the object is persisted.
    fn storage_key(&self) -> Vec<u8> {
        let mut key = self.kind().key_prefix().to_vec();
        key.extend_from_slice(self.id().as_bytes());
        key
    }
    fn version(&self) -> u64 {
        self.meta().map(|m| m.version).unwrap_or_default()
    }
}

/// [`ObjectExt`] for an enum with one variant per kind, each holding a
/// pointer to the object: `$mut` turns that pointer into `&mut`.
macro_rules! object_ext {
    ($enum:ident, $mut:path) => {
        impl ObjectExt for $enum {
            fn kind(&self) -> Kind {
                match self {
                    $enum::Node(_) => Kind::Node,
                    $enum::Service(_) => Kind::Service,
                    $enum::Task(_) => Kind::Task,
                    $enum::Cluster(_) => Kind::Cluster,
                    $enum::Secret(_) => Kind::Secret,
                    $enum::Config(_) => Kind::Config,
                }
            }

            fn id(&self) -> &str {
                match self {
                    $enum::Node(o) => &o.id,
                    $enum::Service(o) => &o.id,
                    $enum::Task(o) => &o.id,
                    $enum::Cluster(o) => &o.id,
                    $enum::Secret(o) => &o.id,
                    $enum::Config(o) => &o.id,
                }
            }

            fn meta(&self) -> Option<&Meta> {
                match self {
                    $enum::Node(o) => o.meta.as_ref(),
                    $enum::Service(o) => o.meta.as_ref(),
                    $enum::Task(o) => o.meta.as_ref(),
                    $enum::Cluster(o) => o.meta.as_ref(),
                    $enum::Secret(o) => o.meta.as_ref(),
                    $enum::Config(o) => o.meta.as_ref(),
                }
            }

            fn meta_mut(&mut self) -> &mut Meta {
                let meta = match self {
                    $enum::Node(o) => &mut $mut(o).meta,
                    $enum::Service(o) => &mut $mut(o).meta,
                    $enum::Task(o) => &mut $mut(o).meta,
                    $enum::Cluster(o) => &mut $mut(o).meta,
                    $enum::Secret(o) => &mut $mut(o).meta,
                    $enum::Config(o) => &mut $mut(o).meta,
                };
                meta.get_or_insert_with(Default::default)
            }
        }
    };
}

object_ext!(Object, AsMut::as_mut);
object_ext!(Stored, Arc::make_mut);

/// A stored object as the tables and the change feed hold it: one copy of each
/// version, shared. Applying a write moves the decoded object behind an `Arc`
/// that the table and the committed [`Change`](super::Change) both point to,
/// where it used to be deep-copied for the second; consumers that keep an
/// object share it too. Nothing mutates a shared object: an update replaces
/// the table's pointer (and [`ObjectExt::meta_mut`] copies on write).
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    Node(Arc<Node>),
    Service(Arc<Service>),
    Task(Arc<Task>),
    Cluster(Arc<Cluster>),
    Secret(Arc<Secret>),
    Config(Arc<Config>),
}

impl From<Object> for Stored {
    /// Moves the object out of its box (a shallow copy: its strings and
    /// lists stay where they are).
    fn from(object: Object) -> Self {
        match object {
            Object::Node(o) => Stored::Node(Arc::from(o)),
            Object::Service(o) => Stored::Service(Arc::from(o)),
            Object::Task(o) => Stored::Task(Arc::from(o)),
            Object::Cluster(o) => Stored::Cluster(Arc::from(o)),
            Object::Secret(o) => Stored::Secret(Arc::from(o)),
            Object::Config(o) => Stored::Config(Arc::from(o)),
        }
    }
}

impl Stored {
    /// An owned copy, for a message that must own what it carries.
    pub fn to_object(&self) -> Object {
        match self {
            Stored::Node(o) => Object::Node(Box::new(Node::clone(o))),
            Stored::Service(o) => Object::Service(Box::new(Service::clone(o))),
            Stored::Task(o) => Object::Task(Box::new(Task::clone(o))),
            Stored::Cluster(o) => Object::Cluster(Box::new(Cluster::clone(o))),
            Stored::Secret(o) => Object::Secret(Box::new(Secret::clone(o))),
            Stored::Config(o) => Object::Config(Box::new(Config::clone(o))),
        }
    }
}

#[cfg(test)]
/// Encode an object for the sled state tree.
///
/// The bytes are a `StoreObject` message, written without cloning the object.
pub fn encode(object: &Object) -> Vec<u8> {
    use prost::encoding::message::encode as field;
    let mut buf = Vec::with_capacity(256);
    match object {
        Object::Node(o) => field(1, o, &mut buf),
        Object::Service(o) => field(2, o, &mut buf),
        Object::Task(o) => field(3, o, &mut buf),
        Object::Cluster(o) => field(4, o, &mut buf),
        Object::Secret(o) => field(5, o, &mut buf),
        Object::Config(o) => field(6, o, &mut buf),
    }
    buf
}

/// Decode what [`encode`] wrote.
pub fn decode(bytes: &[u8]) -> Result<Object, String> {
    use prost::Message;
    shoal_proto::StoreObject::decode(bytes)
        .map_err(|e| e.to_string())?
        .object
        .ok_or_else(|| "stored object without a kind".to_string())
}
