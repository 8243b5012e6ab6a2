//! The stored object kinds as one enum, and what every kind has in common
//! (id, meta, the key it lives under in sled).

use shoal_proto::Meta;

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

impl ObjectExt for Object {
    fn kind(&self) -> Kind {
        match self {
            Object::Node(_) => Kind::Node,
            Object::Service(_) => Kind::Service,
            Object::Task(_) => Kind::Task,
            Object::Cluster(_) => Kind::Cluster,
            Object::Secret(_) => Kind::Secret,
            Object::Config(_) => Kind::Config,
        }
    }

    fn id(&self) -> &str {
        match self {
            Object::Node(o) => &o.id,
            Object::Service(o) => &o.id,
            Object::Task(o) => &o.id,
            Object::Cluster(o) => &o.id,
            Object::Secret(o) => &o.id,
            Object::Config(o) => &o.id,
        }
    }

    fn meta(&self) -> Option<&Meta> {
        match self {
            Object::Node(o) => o.meta.as_ref(),
            Object::Service(o) => o.meta.as_ref(),
            Object::Task(o) => o.meta.as_ref(),
            Object::Cluster(o) => o.meta.as_ref(),
            Object::Secret(o) => o.meta.as_ref(),
            Object::Config(o) => o.meta.as_ref(),
        }
    }

    fn meta_mut(&mut self) -> &mut Meta {
        match self {
            Object::Node(o) => o.meta.get_or_insert_with(Default::default),
            Object::Service(o) => o.meta.get_or_insert_with(Default::default),
            Object::Task(o) => o.meta.get_or_insert_with(Default::default),
            Object::Cluster(o) => o.meta.get_or_insert_with(Default::default),
            Object::Secret(o) => o.meta.get_or_insert_with(Default::default),
            Object::Config(o) => o.meta.get_or_insert_with(Default::default),
        }
    }
}

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
