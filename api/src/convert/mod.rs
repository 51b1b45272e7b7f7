//! Conversions between protobuf messages and model types, one file per type.

mod image;
mod kv;
mod migration;
mod node;
mod request_id;
mod settings;
mod vm;

pub use image::image_info;
pub use migration::migration_info;
pub use node::node_info;

/// An optional protobuf value: `(found, value)` pairs stand for `Option<String>` on the wire.
pub fn split_option(value: Option<String>) -> (bool, String) {
    match value {
        Some(v) => (true, v),
        None => (false, String::new()),
    }
}

/// The inverse of [`split_option`].
pub fn join_option(found: bool, value: String) -> Option<String> {
    found.then_some(value)
}

/// Empty string ⇄ absent, for optional proto3 strings.
pub(crate) fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_string())
}
