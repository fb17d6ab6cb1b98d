//! Domain newtypes: values that are valid by construction, and the pure
//! parsers that configuration and the runtime share.
//!
//! Request fields are parsed into these at the edge (parse, don't validate);
//! the rest of the code can rely on them without re-checking. The shared
//! parsers are rotatable key lists ([`parse_keys`], [`KeyRing`]), the callback
//! address policy ([`CallbackPolicy`], [`is_private_ip`]), roles ([`Role`]),
//! upstream path templates ([`PathTemplate`]) and cron expressions
//! ([`parse_cron`]): `config` parses settings into them once, at load, and
//! the modules that build runtime objects take the parsed values.
//!
//! One file per concept: [`callback`] (callback URLs, the callback policy,
//! address classification), [`keys`] (key lists), [`json`] ([`JsonText`]),
//! [`status`] (command, delivery and job-kind enums and their `text` codec),
//! [`path_template`], [`roles`], [`idempotency`], [`cron`] and [`time`].
//! Everything is re-exported here, so `crate::domain::X` names every item.
//!
//! This is the bottom of the module graph: it imports no other module of the
//! crate (`scripts/check_cycles.py`, run by CI, keeps the graph acyclic).

pub mod callback;
pub mod cron;
pub mod idempotency;
pub mod json;
pub mod keys;
pub mod path_template;
pub mod roles;
pub mod status;
pub mod time;

pub use self::cron::parse_cron;
pub use self::time::storable_time;
pub use callback::{
    check_literal_host, is_private_host, is_private_ip, CallbackPolicy, CallbackUrl,
};
pub use idempotency::IdempotencyKey;
pub use json::{json_text_depth, JsonText};
pub use keys::{
    parse_keys, KeyConfigError, KeyEntry, KeyRing, ENCRYPTION_KEY_BYTES, MAC_KEY_BYTES,
    MAX_KEY_ID_LEN,
};
pub use path_template::PathTemplate;
pub(crate) use path_template::Segment;
pub use roles::Role;
pub use status::{CommandStatus, DeliveryStatus, JobKind};
