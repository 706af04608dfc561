//! The [`QueryType`] of each Kafka api key, for QueryTypeFilter.
//!
//! Kafka's query type follows from the api key alone, so it is read from the first bytes of
//! a request ([`super::header::request_ids`]) without parsing it. The shape is the valkey
//! module's [`QueryType`] (re-exported as [`super::QueryType`]), so one filter config
//! serves every protocol; Kafka never yields `PubSubMessage`.
//!
//! - `Read`: reads records, offsets or cluster state: Fetch, ListOffsets, Metadata,
//!   OffsetFetch, FindCoordinator and the Describe/List family; also connection set-up
//!   (ApiVersions, SASL), which changes no data, as valkey counts PING and AUTH.
//! - `Write`: changes data and returns only a status: Produce, OffsetCommit,
//!   TxnOffsetCommit, OffsetDelete, DeleteRecords, DeleteGroups, the transaction calls
//!   (InitProducerId, AddPartitionsToTxn, AddOffsetsToTxn, EndTxn) and ShareAcknowledge.
//!   Committing an offset writes the group's offsets topic and reads nothing, hence Write.
//! - `ReadWrite`: group membership (JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
//!   ConsumerGroupHeartbeat, ShareGroupHeartbeat) changes the group's state and returns
//!   the assignment; ShareFetch both reads records and acquires them.
//! - `SchemaChange`: changes what the cluster is rather than its records: topics,
//!   partitions, configs, ACLs, quotas, credentials, delegation tokens, features, replica
//!   placement, and the broker-to-broker and controller apis a client never sends.
//! - An api key this crate does not know is `Write`, the conservative choice valkey makes
//!   too: a deny list of writes also stops requests the proxy cannot name.

use super::{ApiKey, QueryType};

/// The query type of a raw api key (as read by [`super::header::request_ids`]).
pub fn classify_raw(api_key: i16) -> QueryType {
    ApiKey::try_from(api_key).map_or(QueryType::Write, classify)
}

/// The query type of an api key.
pub fn classify(api_key: ApiKey) -> QueryType {
    use ApiKey::*;
    match api_key {
        Fetch
        | ListOffsets
        | Metadata
        | OffsetFetch
        | FindCoordinator
        | DescribeGroups
        | ListGroups
        | ApiVersions
        | SaslHandshake
        | SaslAuthenticate
        | DescribeAcls
        | DescribeConfigs
        | DescribeLogDirs
        | DescribeDelegationToken
        | ListPartitionReassignments
        | DescribeClientQuotas
        | DescribeUserScramCredentials
        | DescribeCluster
        | DescribeProducers
        | DescribeTransactions
        | ListTransactions
        | ConsumerGroupDescribe
        | GetTelemetrySubscriptions
        | ListConfigResources
        | DescribeTopicPartitions
        | ShareGroupDescribe
        | DescribeShareGroupOffsets
        | OffsetForLeaderEpoch
        | DescribeQuorum => QueryType::Read,
        Produce | OffsetCommit | TxnOffsetCommit | OffsetDelete | DeleteRecords | DeleteGroups | InitProducerId
        | AddPartitionsToTxn | AddOffsetsToTxn | EndTxn | ShareAcknowledge | PushTelemetry => QueryType::Write,
        JoinGroup | SyncGroup | Heartbeat | LeaveGroup | ConsumerGroupHeartbeat | ShareGroupHeartbeat | ShareFetch => {
            QueryType::ReadWrite
        }
        CreateTopics
        | DeleteTopics
        | CreatePartitions
        | AlterConfigs
        | IncrementalAlterConfigs
        | CreateAcls
        | DeleteAcls
        | AlterReplicaLogDirs
        | CreateDelegationToken
        | RenewDelegationToken
        | ExpireDelegationToken
        | ElectLeaders
        | AlterPartitionReassignments
        | AlterClientQuotas
        | AlterUserScramCredentials
        | UpdateFeatures
        | AlterShareGroupOffsets
        | DeleteShareGroupOffsets => QueryType::SchemaChange,
        // Broker-to-broker and controller apis.
        WriteTxnMarkers
        | Vote
        | BeginQuorumEpoch
        | EndQuorumEpoch
        | AlterPartition
        | Envelope
        | FetchSnapshot
        | BrokerRegistration
        | BrokerHeartbeat
        | UnregisterBroker
        | AllocateProducerIds
        | ControllerRegistration
        | AssignReplicasToDirs
        | AddRaftVoter
        | RemoveRaftVoter
        | UpdateRaftVoter
        | InitializeShareGroupState
        | ReadShareGroupState
        | WriteShareGroupState
        | DeleteShareGroupState
        | ReadShareGroupStateSummary => QueryType::SchemaChange,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::captured;
    use crate::kafka::header::request_ids;

    #[test]
    fn classification() {
        assert_eq!(classify(ApiKey::Produce), QueryType::Write);
        for key in [ApiKey::Fetch, ApiKey::ListOffsets, ApiKey::Metadata, ApiKey::ApiVersions] {
            assert_eq!(classify(key), QueryType::Read, "{key:?}");
        }
        for key in [ApiKey::CreateTopics, ApiKey::DeleteTopics, ApiKey::CreatePartitions, ApiKey::AlterConfigs] {
            assert_eq!(classify(key), QueryType::SchemaChange, "{key:?}");
        }
        assert_eq!(classify(ApiKey::OffsetCommit), QueryType::Write);
        assert_eq!(classify(ApiKey::JoinGroup), QueryType::ReadWrite);
        assert_eq!(classify_raw(999), QueryType::Write);
        assert_eq!(classify_raw(4), QueryType::Write);
    }

    #[test]
    fn produce_v9_1_classified_from_bytes() {
        let ids = request_ids(captured::PRODUCE_V9_REQUEST_ACKS_1).unwrap();
        assert_eq!(classify_raw(ids.api_key), QueryType::Write);
        let ids = request_ids(captured::FETCH_V12_REQUEST).unwrap();
        assert_eq!(classify_raw(ids.api_key), QueryType::Read);
    }
}
