//! Disk images.

use paddock_model::image::Image;
use paddock_model::Command;

use crate::pb;

/// One image as the API shows it.
pub fn image_info(name: &str, image: &Image) -> pb::ImageInfo {
    pb::ImageInfo {
        name: name.to_string(),
        format: image.format.clone(),
        size_bytes: image.size_bytes,
        sha256: image.sha256.clone(),
        imported_ms: image.imported_at_ms,
        holders: image.holders.iter().cloned().collect(),
    }
}

impl pb::ImageDeleteRequest {
    pub fn command(&self) -> Command {
        Command::ImageDelete {
            name: self.name.clone(),
        }
    }
}
