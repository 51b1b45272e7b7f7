//! Client request ids (exactly-once writes).

use paddock_model::RequestId;

use crate::pb;

impl From<pb::RequestId> for RequestId {
    fn from(id: pb::RequestId) -> Self {
        RequestId {
            client: id.client,
            seq: id.seq,
        }
    }
}

impl From<RequestId> for pb::RequestId {
    fn from(id: RequestId) -> Self {
        pb::RequestId {
            client: id.client,
            seq: id.seq,
        }
    }
}
