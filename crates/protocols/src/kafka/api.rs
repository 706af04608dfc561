//! Facts about api keys that `kafka-protocol`'s enums do not offer: the api key of a
//! parsed body, a default response per api key, and the fields most responses share.
//!
//! The lists below are generated from `kafka-protocol` 0.18's messages: every api key,
//! the responses with a top-level `error_code`, and those with `throttle_time_ms`.

use super::{ApiKey, RequestKind, ResponseKind};

/// Calls `$m!` with every api key (each a variant of [`ApiKey`], [`RequestKind`] and
/// [`ResponseKind`] alike).
macro_rules! all_api_keys {
    ($m:ident) => {
        $m!(
            AddOffsetsToTxn,
            AddPartitionsToTxn,
            AddRaftVoter,
            AllocateProducerIds,
            AlterClientQuotas,
            AlterConfigs,
            AlterPartitionReassignments,
            AlterPartition,
            AlterReplicaLogDirs,
            AlterShareGroupOffsets,
            AlterUserScramCredentials,
            ApiVersions,
            AssignReplicasToDirs,
            BeginQuorumEpoch,
            BrokerHeartbeat,
            BrokerRegistration,
            ConsumerGroupDescribe,
            ConsumerGroupHeartbeat,
            ControllerRegistration,
            CreateAcls,
            CreateDelegationToken,
            CreatePartitions,
            CreateTopics,
            DeleteAcls,
            DeleteGroups,
            DeleteRecords,
            DeleteShareGroupOffsets,
            DeleteShareGroupState,
            DeleteTopics,
            DescribeAcls,
            DescribeClientQuotas,
            DescribeCluster,
            DescribeConfigs,
            DescribeDelegationToken,
            DescribeGroups,
            DescribeLogDirs,
            DescribeProducers,
            DescribeQuorum,
            DescribeShareGroupOffsets,
            DescribeTopicPartitions,
            DescribeTransactions,
            DescribeUserScramCredentials,
            ElectLeaders,
            EndQuorumEpoch,
            EndTxn,
            Envelope,
            ExpireDelegationToken,
            Fetch,
            FetchSnapshot,
            FindCoordinator,
            GetTelemetrySubscriptions,
            Heartbeat,
            IncrementalAlterConfigs,
            InitProducerId,
            InitializeShareGroupState,
            JoinGroup,
            LeaveGroup,
            ListConfigResources,
            ListGroups,
            ListOffsets,
            ListPartitionReassignments,
            ListTransactions,
            Metadata,
            OffsetCommit,
            OffsetDelete,
            OffsetFetch,
            OffsetForLeaderEpoch,
            Produce,
            PushTelemetry,
            ReadShareGroupState,
            ReadShareGroupStateSummary,
            RemoveRaftVoter,
            RenewDelegationToken,
            SaslAuthenticate,
            SaslHandshake,
            ShareAcknowledge,
            ShareFetch,
            ShareGroupDescribe,
            ShareGroupHeartbeat,
            SyncGroup,
            TxnOffsetCommit,
            UnregisterBroker,
            UpdateFeatures,
            UpdateRaftVoter,
            Vote,
            WriteShareGroupState,
            WriteTxnMarkers
        )
    };
}

/// Calls `$m!` with the api keys whose response has a top-level `error_code` (in some
/// versions at least).
macro_rules! with_top_level_error_code {
    ($m:ident) => {
        $m!(
            AddOffsetsToTxn,
            AddPartitionsToTxn,
            AddRaftVoter,
            AllocateProducerIds,
            AlterPartitionReassignments,
            AlterPartition,
            AlterShareGroupOffsets,
            ApiVersions,
            AssignReplicasToDirs,
            BeginQuorumEpoch,
            BrokerHeartbeat,
            BrokerRegistration,
            ConsumerGroupHeartbeat,
            ControllerRegistration,
            CreateDelegationToken,
            DeleteShareGroupOffsets,
            DescribeAcls,
            DescribeClientQuotas,
            DescribeCluster,
            DescribeDelegationToken,
            DescribeLogDirs,
            DescribeQuorum,
            DescribeUserScramCredentials,
            ElectLeaders,
            EndQuorumEpoch,
            EndTxn,
            Envelope,
            ExpireDelegationToken,
            Fetch,
            FetchSnapshot,
            FindCoordinator,
            GetTelemetrySubscriptions,
            Heartbeat,
            InitProducerId,
            JoinGroup,
            LeaveGroup,
            ListConfigResources,
            ListGroups,
            ListPartitionReassignments,
            ListTransactions,
            Metadata,
            OffsetDelete,
            OffsetFetch,
            PushTelemetry,
            RemoveRaftVoter,
            RenewDelegationToken,
            SaslAuthenticate,
            SaslHandshake,
            ShareAcknowledge,
            ShareFetch,
            ShareGroupHeartbeat,
            SyncGroup,
            UnregisterBroker,
            UpdateFeatures,
            UpdateRaftVoter,
            Vote
        )
    };
}

/// Calls `$m!` with the api keys whose response has `throttle_time_ms`.
macro_rules! with_throttle_time_ms {
    ($m:ident) => {
        $m!(
            AddOffsetsToTxn,
            AddPartitionsToTxn,
            AddRaftVoter,
            AllocateProducerIds,
            AlterClientQuotas,
            AlterConfigs,
            AlterPartitionReassignments,
            AlterPartition,
            AlterReplicaLogDirs,
            AlterShareGroupOffsets,
            AlterUserScramCredentials,
            ApiVersions,
            AssignReplicasToDirs,
            BrokerHeartbeat,
            BrokerRegistration,
            ConsumerGroupDescribe,
            ConsumerGroupHeartbeat,
            ControllerRegistration,
            CreateAcls,
            CreateDelegationToken,
            CreatePartitions,
            CreateTopics,
            DeleteAcls,
            DeleteGroups,
            DeleteRecords,
            DeleteShareGroupOffsets,
            DeleteTopics,
            DescribeAcls,
            DescribeClientQuotas,
            DescribeCluster,
            DescribeConfigs,
            DescribeDelegationToken,
            DescribeGroups,
            DescribeLogDirs,
            DescribeProducers,
            DescribeShareGroupOffsets,
            DescribeTopicPartitions,
            DescribeTransactions,
            DescribeUserScramCredentials,
            ElectLeaders,
            EndTxn,
            ExpireDelegationToken,
            Fetch,
            FetchSnapshot,
            FindCoordinator,
            GetTelemetrySubscriptions,
            Heartbeat,
            IncrementalAlterConfigs,
            InitProducerId,
            JoinGroup,
            LeaveGroup,
            ListConfigResources,
            ListGroups,
            ListOffsets,
            ListPartitionReassignments,
            ListTransactions,
            Metadata,
            OffsetCommit,
            OffsetDelete,
            OffsetFetch,
            OffsetForLeaderEpoch,
            Produce,
            PushTelemetry,
            RemoveRaftVoter,
            RenewDelegationToken,
            ShareAcknowledge,
            ShareFetch,
            ShareGroupDescribe,
            ShareGroupHeartbeat,
            SyncGroup,
            TxnOffsetCommit,
            UnregisterBroker,
            UpdateFeatures,
            UpdateRaftVoter
        )
    };
}

/// The api key of a parsed request body.
pub fn request_api_key(body: &RequestKind) -> Option<ApiKey> {
    macro_rules! arms {
        ($($name:ident),*) => {
            match body {
                $(RequestKind::$name(_) => Some(ApiKey::$name),)*
                #[allow(unreachable_patterns)]
                _ => None,
            }
        };
    }
    all_api_keys!(arms)
}

/// The api key of a parsed response body.
pub fn response_api_key(body: &ResponseKind) -> Option<ApiKey> {
    macro_rules! arms {
        ($($name:ident),*) => {
            match body {
                $(ResponseKind::$name(_) => Some(ApiKey::$name),)*
                #[allow(unreachable_patterns)]
                _ => None,
            }
        };
    }
    all_api_keys!(arms)
}

/// The response of `api_key` with every field at its default (no error, nothing in it).
pub fn default_response(api_key: ApiKey) -> ResponseKind {
    macro_rules! arms {
        ($($name:ident),*) => {
            match api_key {
                $(ApiKey::$name => ResponseKind::$name(Default::default()),)*
            }
        };
    }
    all_api_keys!(arms)
}

/// Sets the top-level `error_code` of a response; false when the message has none. Some
/// messages carry it only in later versions: the encoder drops it in earlier ones.
pub(crate) fn set_top_level_error_code(body: &mut ResponseKind, code: i16) -> bool {
    macro_rules! arms {
        ($($name:ident),*) => {
            match body {
                $(ResponseKind::$name(r) => r.error_code = code,)*
                _ => return false,
            }
        };
    }
    with_top_level_error_code!(arms);
    true
}

/// The top-level `error_code` of a response, if its message has one (in some version:
/// whether this version carries it is up to the encoder).
pub fn top_level_error_code(body: &ResponseKind) -> Option<i16> {
    macro_rules! arms {
        ($($name:ident),*) => {
            match body {
                $(ResponseKind::$name(r) => Some(r.error_code),)*
                _ => None,
            }
        };
    }
    with_top_level_error_code!(arms)
}

/// The `throttle_time_ms` of a response, if its message has one.
pub fn throttle_time_ms(body: &ResponseKind) -> Option<i32> {
    macro_rules! arms {
        ($($name:ident),*) => {
            match body {
                $(ResponseKind::$name(r) => Some(r.throttle_time_ms),)*
                _ => None,
            }
        };
    }
    with_throttle_time_ms!(arms)
}

/// Sets `throttle_time_ms` (how long the client should back off, for example after a
/// RequestThrottling refusal); false when the message has no such field. Versions that
/// predate the field drop it when encoding.
pub fn set_throttle_time_ms(body: &mut ResponseKind, ms: i32) -> bool {
    macro_rules! arms {
        ($($name:ident),*) => {
            match body {
                $(ResponseKind::$name(r) => r.throttle_time_ms = ms,)*
                _ => return false,
            }
        };
    }
    with_throttle_time_ms!(arms);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_api_key_round_trips_through_its_default_response() {
        for api_key in ApiKey::iter() {
            assert_eq!(response_api_key(&default_response(api_key)), Some(api_key));
        }
    }

    #[test]
    fn request_keys() {
        let body = RequestKind::Metadata(Default::default());
        assert_eq!(request_api_key(&body), Some(ApiKey::Metadata));
    }

    #[test]
    fn throttle() {
        let mut produce = default_response(ApiKey::Produce);
        assert!(set_throttle_time_ms(&mut produce, 250));
        assert_eq!(throttle_time_ms(&produce), Some(250));
        let mut sasl = default_response(ApiKey::SaslHandshake);
        assert!(!set_throttle_time_ms(&mut sasl, 250));
        assert_eq!(throttle_time_ms(&sasl), None);
    }

    #[test]
    fn top_level_error_codes() {
        let mut heartbeat = default_response(ApiKey::Heartbeat);
        assert!(set_top_level_error_code(&mut heartbeat, 89));
        assert!(matches!(heartbeat, ResponseKind::Heartbeat(ref r) if r.error_code == 89));
        assert!(!set_top_level_error_code(&mut default_response(ApiKey::Produce), 89));
    }
}
