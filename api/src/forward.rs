//! Messages a follower sends to the leader on the Raft service's `Forward` call: a client write
//! to propose, or a read to serve after a read-index round. Both ends are paddockd, so these are
//! model types in postcard behind the format version, not protobuf.

use paddock_model::{ClientRequest, Outcome, Query, QueryResult};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardRequest {
    // Boxed: a request can carry a whole VM spec, much larger than a query.
    Write(Box<ClientRequest>),
    Read(Query),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardReply {
    Written(Outcome),
    Read(QueryResult),
}
