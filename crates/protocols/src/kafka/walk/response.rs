//! Walking a broker's response before `kafka-protocol` decodes it.
//!
//! Responses come from the brokers the operator configured, but a broker with a bug, a
//! non-Kafka service at a broker's address, or a corrupted stream must cost the client one
//! error, not the process (see "Untrusted input" in the module above). So every response
//! the proxy decodes is walked first, as requests are ([`super::check_request`]), and the
//! response kinds with arrays that are not walked here are not decoded at all.
//!
//! The layouts follow Kafka's message definitions for the versions `kafka-protocol` 0.18
//! knows; a version it does not know is refused by its decoder after the walk.

use super::super::framing::LENGTH_PREFIX_LEN;
use super::super::header::response_body_offset;
use super::super::wire::Reader;
use super::super::{ApiKey, KafkaCodecError};
use super::Walk;

/// The most array elements one walked response may hold, all arrays together. A response
/// comes from a broker, and the Metadata of a cluster of half a million partitions (three
/// replicas each) needs about 4 million; a count past this is refused, so no response can
/// make the decoder reserve more than about 600 MiB whatever it says.
pub const MAX_RESPONSE_ELEMENTS: usize = 4_000_000;

/// True for the responses [`check_response`] lets through to the decoder: those walked
/// here, and those without arrays (which cannot make it reserve anything).
pub fn is_response_walked(api_key: ApiKey) -> bool {
    walk_of(api_key).is_some() || array_free(api_key)
}

/// Response kinds whose bodies hold no array, so decoding them reserves nothing from a count.
fn array_free(api_key: ApiKey) -> bool {
    matches!(
        api_key,
        ApiKey::SaslAuthenticate
            | ApiKey::CreateDelegationToken
            | ApiKey::Heartbeat
            | ApiKey::InitProducerId
            | ApiKey::EndTxn
    )
}

type BodyWalk = fn(&mut Walk, i16) -> Result<(), KafkaCodecError>;

/// The walk of a response kind's body, and the first version with a flexible encoding.
fn walk_of(api_key: ApiKey) -> Option<(BodyWalk, i16)> {
    Some(match api_key {
        ApiKey::Produce => (produce, 9),
        ApiKey::Fetch => (fetch, 12),
        ApiKey::ListOffsets => (list_offsets, 6),
        ApiKey::OffsetForLeaderEpoch => (offset_for_leader_epoch, 4),
        ApiKey::DeleteRecords => (delete_records, 2),
        ApiKey::OffsetCommit => (offset_commit, 8),
        ApiKey::TxnOffsetCommit => (txn_offset_commit, 3),
        ApiKey::AddPartitionsToTxn => (add_partitions_to_txn, 3),
        ApiKey::OffsetFetch => (offset_fetch, 6),
        ApiKey::DescribeGroups => (describe_groups, 5),
        ApiKey::SaslHandshake => (sasl_handshake, i16::MAX),
        ApiKey::ApiVersions => (api_versions, 3),
        ApiKey::Metadata => (metadata, 9),
        ApiKey::DescribeCluster => (describe_cluster, 0),
        ApiKey::FindCoordinator => (find_coordinator, 3),
        _ => return None,
    })
}

/// Checks a whole response message (length prefix included) to a request of `api_key` at
/// `api_version` before it is decoded. An error means the response is not what its request
/// expects, or is of a kind the proxy does not decode.
pub fn check_response(msg: &[u8], api_key: ApiKey, api_version: i16) -> Result<(), KafkaCodecError> {
    let offset = response_body_offset(msg, api_key, api_version)?;
    // The header's tagged fields are re-encoded with the body: their tags must be keepable.
    let mut header = Walk { r: Reader::new(msg, LENGTH_PREFIX_LEN + 4), flexible: true, budget: 0 };
    if api_key.response_header_version(api_version) >= 1 {
        header.tagged("response header tagged fields")?;
    }
    if array_free(api_key) {
        return Ok(());
    }
    let (walk, first_flexible) = walk_of(api_key).ok_or(KafkaCodecError::NotWalked(api_key))?;
    let mut w =
        Walk { r: Reader::new(msg, offset), flexible: api_version >= first_flexible, budget: MAX_RESPONSE_ELEMENTS };
    walk(&mut w, api_version)?;
    match w.r.remaining() {
        0 => Ok(()),
        len => Err(KafkaCodecError::TrailingBytes { api_key, version: api_version, len }),
    }
}

impl<'a> Walk<'a> {
    /// Fixed-size fields present from version `since` on.
    fn skip_since(&mut self, v: i16, since: i16, n: usize, what: &'static str) -> Result<(), KafkaCodecError> {
        if v >= since {
            self.skip(n, what)?;
        }
        Ok(())
    }

    fn strings(&mut self, n: usize, what: &'static str) -> Result<(), KafkaCodecError> {
        (0..n).try_for_each(|_| self.string(what).map(|_| ()))
    }

    /// An array of INT32 (broker ids).
    fn int32s(&mut self, what: &'static str) -> Result<(), KafkaCodecError> {
        self.array(what, |w| w.skip(4, what))
    }

    /// A topic-keyed array of partition results, as most partitioned responses hold:
    /// `topic` walks a topic's own fields and `partition` one partition's, up to its
    /// tagged fields (none of which the decoder reads as a field).
    fn topics(
        &mut self,
        topic: impl Fn(&mut Self) -> Result<(), KafkaCodecError>,
        partition: impl Fn(&mut Self) -> Result<(), KafkaCodecError>,
    ) -> Result<(), KafkaCodecError> {
        self.topics_tagged(topic, |w| {
            partition(w)?;
            w.tagged("partition tagged fields")
        })
    }

    /// [`Walk::topics`] where `partition` walks a partition's tagged fields itself.
    fn topics_tagged(
        &mut self,
        topic: impl Fn(&mut Self) -> Result<(), KafkaCodecError>,
        partition: impl Fn(&mut Self) -> Result<(), KafkaCodecError>,
    ) -> Result<(), KafkaCodecError> {
        self.array("topics", |w| {
            topic(w)?;
            w.array("partitions", &partition)?;
            w.tagged("topic tagged fields")
        })
    }
}

fn name(w: &mut Walk) -> Result<(), KafkaCodecError> {
    w.string("name").map(|_| ())
}

/// A broker's address in Produce and Fetch responses (NodeEndpoints) and DescribeCluster.
fn node_endpoint(w: &mut Walk) -> Result<(), KafkaCodecError> {
    w.skip(4, "node id")?;
    w.string("host")?;
    w.skip(4, "port")?;
    w.string("rack")?;
    w.tagged("node endpoint tagged fields")
}

fn produce(w: &mut Walk, v: i16) -> Result<(), KafkaCodecError> {
    w.topics_tagged(
        |w| super::topic(w, v, 12),
        |w| {
            w.skip(4 + 2 + 8 + 8, "partition response")?;
            w.skip_since(v, 5, 8, "log start offset")?;
            if v >= 8 {
                w.array("record errors", |w| {
                    w.skip(4, "batch index")?;
                    w.string("batch index error message")?;
                    w.tagged("record error tagged fields")
                })?;
                w.string("error message")?;
            }
            // CurrentLeader (tag 0, v10+): a leader id and epoch.
            w.tags("partition tagged fields", |tag, w| {
                (tag == 0 && v >= 10).then(|| w.skip(8, "current leader").and_then(|()| w.tagged("current leader")))
            })
        },
    )?;
    w.skip(4, "throttle time")?;
    // NodeEndpoints (tag 0, v10+).
    w.tags("tagged fields", |tag, w| (tag == 0 && v >= 10).then(|| w.array("node endpoints", node_endpoint)))
}

fn fetch(w: &mut Walk, v: i16) -> Result<(), KafkaCodecError> {
    w.skip(4, "throttle time")?;
    w.skip_since(v, 7, 2 + 4, "error code and session id")?;
    w.topics_tagged(
        |w| super::topic(w, v, 12),
        |w| {
            w.skip(4 + 2 + 8 + 8, "partition data")?;
            w.skip_since(v, 5, 8, "log start offset")?;
            w.array("aborted transactions", |w| {
                w.skip(8 + 8, "aborted transaction")?;
                w.tagged("aborted transaction tagged fields")
            })?;
            w.skip_since(v, 11, 4, "preferred read replica")?;
            w.bytes("records")?;
            // DivergingEpoch (tag 0), CurrentLeader (tag 1) and SnapshotId (tag 2): fixed
            // fields and their own tagged fields.
            w.tags("partition tagged fields", |tag, w| {
                let size = match tag {
                    0 => 4 + 8,
                    1 => 4 + 4,
                    2 => 8 + 4,
                    _ => return None,
                };
                Some(w.skip(size, "partition tagged field").and_then(|()| w.tagged("partition tagged field")))
            })
        },
    )?;
    // NodeEndpoints (tag 0, v16+).
    w.tags("tagged fields", |tag, w| (tag == 0 && v >= 16).then(|| w.array("node endpoints", node_endpoint)))
}

fn list_offsets(w: &mut Walk, v: i16) -> Result<(), KafkaCodecError> {
    w.skip_since(v, 2, 4, "throttle time")?;
    w.topics(name, |w| {
        w.skip(4 + 2 + 8 + 8, "partition response")?;
        w.skip_since(v, 4, 4, "leader epoch")
    })?;
    w.tagged("tagged fields")
}

fn offset_for_leader_epoch(w: &mut Walk, _: i16) -> Result<(), KafkaCodecError> {
    w.skip(4, "throttle time")?;
    w.topics(name, |w| w.skip(2 + 4 + 4 + 8, "epoch end offset"))?;
    w.tagged("tagged fields")
}

fn delete_records(w: &mut Walk, _: i16) -> Result<(), KafkaCodecError> {
    w.skip(4, "throttle time")?;
    w.topics(name, |w| w.skip(4 + 8 + 2, "partition result"))?;
    w.tagged("tagged fields")
}

fn offset_commit(w: &mut Walk, v: i16) -> Result<(), KafkaCodecError> {
    w.skip_since(v, 3, 4, "throttle time")?;
    w.topics(|w| super::topic(w, v, 9), |w| w.skip(4 + 2, "partition result"))?;
    w.tagged("tagged fields")
}

fn txn_offset_commit(w: &mut Walk, _: i16) -> Result<(), KafkaCodecError> {
    w.skip(4, "throttle time")?;
    w.topics(name, |w| w.skip(4 + 2, "partition result"))?;
    w.tagged("tagged fields")
}

fn add_partitions_to_txn(w: &mut Walk, v: i16) -> Result<(), KafkaCodecError> {
    w.skip(4, "throttle time")?;
    let topic_results = |w: &mut Walk| w.topics(name, |w| w.skip(4 + 2, "partition result"));
    if v >= 4 {
        w.skip(2, "error code")?;
        w.array("results by transaction", |w| {
            w.string("transactional id")?;
            topic_results(w)?;
            w.tagged("transaction result tagged fields")
        })?;
    } else {
        topic_results(w)?;
    }
    w.tagged("tagged fields")
}

fn offset_fetch(w: &mut Walk, v: i16) -> Result<(), KafkaCodecError> {
    w.skip_since(v, 3, 4, "throttle time")?;
    if v <= 7 {
        w.topics(name, |w| {
            w.skip(4 + 8, "partition and offset")?;
            if v >= 5 {
                w.skip(4, "committed leader epoch")?;
            }
            w.string("metadata")?;
            w.skip(2, "error code")
        })?;
        w.skip_since(v, 2, 2, "error code")?;
    } else {
        w.array("groups", |w| {
            w.string("group id")?;
            w.topics(
                |w| super::topic(w, v, 9),
                |w| {
                    w.skip(4 + 8 + 4, "partition, offset and epoch")?;
                    w.string("metadata")?;
                    w.skip(2, "error code")
                },
            )?;
            w.skip(2, "group error code")?;
            w.tagged("group tagged fields")
        })?;
    }
    w.tagged("tagged fields")
}

fn describe_groups(w: &mut Walk, v: i16) -> Result<(), KafkaCodecError> {
    w.skip_since(v, 1, 4, "throttle time")?;
    w.array("groups", |w| {
        w.skip(2, "error code")?;
        if v >= 6 {
            w.string("error message")?;
        }
        w.strings(4, "group id, state, protocol type and protocol")?;
        w.array("members", |w| {
            w.string("member id")?;
            if v >= 4 {
                w.string("group instance id")?;
            }
            w.strings(2, "client id and host")?;
            w.bytes("member metadata")?;
            w.bytes("member assignment")?;
            w.tagged("member tagged fields")
        })?;
        w.skip_since(v, 3, 4, "authorized operations")?;
        w.tagged("group tagged fields")
    })?;
    w.tagged("tagged fields")
}

fn sasl_handshake(w: &mut Walk, _: i16) -> Result<(), KafkaCodecError> {
    w.skip(2, "error code")?;
    w.array("mechanisms", |w| w.string("mechanism").map(|_| ()))
}

fn api_versions(w: &mut Walk, v: i16) -> Result<(), KafkaCodecError> {
    w.skip(2, "error code")?;
    w.array("api keys", |w| {
        w.skip(2 + 2 + 2, "api key and versions")?;
        w.tagged("api key tagged fields")
    })?;
    w.skip_since(v, 1, 4, "throttle time")?;
    // SupportedFeatures (tag 0) and FinalizedFeatures (tag 2): names with two versions
    // each; FinalizedFeaturesEpoch (tag 1) and ZkMigrationReady (tag 3): fixed fields.
    w.tags("tagged fields", |tag, w| match tag {
        0 | 2 => Some(w.array("features", |w| {
            w.string("feature name")?;
            w.skip(2 + 2, "feature versions")?;
            w.tagged("feature tagged fields")
        })),
        1 => Some(w.skip(8, "finalized features epoch")),
        3 => Some(w.skip(1, "zk migration ready")),
        _ => None,
    })
}

fn metadata(w: &mut Walk, v: i16) -> Result<(), KafkaCodecError> {
    w.skip_since(v, 3, 4, "throttle time")?;
    w.array("brokers", |w| {
        w.skip(4, "node id")?;
        w.string("host")?;
        w.skip(4, "port")?;
        if v >= 1 {
            w.string("rack")?;
        }
        w.tagged("broker tagged fields")
    })?;
    if v >= 2 {
        w.string("cluster id")?;
    }
    w.skip_since(v, 1, 4, "controller id")?;
    w.array("topics", |w| {
        w.skip(2, "topic error code")?;
        w.string("topic name")?;
        w.skip_since(v, 10, 16, "topic id")?;
        w.skip_since(v, 1, 1, "is internal")?;
        w.array("partitions", |w| {
            w.skip(2 + 4 + 4, "partition")?;
            w.skip_since(v, 7, 4, "leader epoch")?;
            w.int32s("replica nodes")?;
            w.int32s("isr nodes")?;
            if v >= 5 {
                w.int32s("offline replicas")?;
            }
            w.tagged("partition tagged fields")
        })?;
        w.skip_since(v, 8, 4, "topic authorized operations")?;
        w.tagged("topic tagged fields")
    })?;
    if (8..=10).contains(&v) {
        w.skip(4, "cluster authorized operations")?;
    }
    w.skip_since(v, 13, 2, "error code")?;
    w.tagged("tagged fields")
}

fn describe_cluster(w: &mut Walk, v: i16) -> Result<(), KafkaCodecError> {
    w.skip(4 + 2, "throttle time and error code")?;
    w.string("error message")?;
    w.skip_since(v, 1, 1, "endpoint type")?;
    w.string("cluster id")?;
    w.skip(4, "controller id")?;
    w.array("brokers", |w| {
        w.skip(4, "broker id")?;
        w.string("host")?;
        w.skip(4, "port")?;
        w.string("rack")?;
        w.skip_since(v, 2, 1, "is fenced")?;
        w.tagged("broker tagged fields")
    })?;
    w.skip(4, "cluster authorized operations")?;
    w.tagged("tagged fields")
}

fn find_coordinator(w: &mut Walk, v: i16) -> Result<(), KafkaCodecError> {
    w.skip_since(v, 1, 4, "throttle time")?;
    if v <= 3 {
        w.skip(2, "error code")?;
        if v >= 1 {
            w.string("error message")?;
        }
        w.skip(4, "node id")?;
        w.string("host")?;
        w.skip(4, "port")?;
    } else {
        w.array("coordinators", |w| {
            w.string("key")?;
            w.skip(4, "node id")?;
            w.string("host")?;
            w.skip(4 + 2, "port and error code")?;
            w.string("error message")?;
            w.tagged("coordinator tagged fields")
        })?;
    }
    w.tagged("tagged fields")
}

#[cfg(test)]
pub(crate) mod samples;

#[cfg(test)]
mod tests;
