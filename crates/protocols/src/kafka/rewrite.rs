//! Pointing clients at the proxy: broker addresses in responses are replaced by the proxy's.
//!
//! A Kafka client bootstraps from one address, then connects to the brokers that Metadata,
//! FindCoordinator and DescribeCluster responses name. For every connection to go through
//! the proxy (KafkaSinkSingle), each of those hosts and ports becomes the proxy's own. Node
//! ids stay as they are, so clients still tell brokers apart; they just reach them all at
//! one address.

use bytes::Bytes;
use kafka_protocol::protocol::StrBytes;

use super::{ApiKey, KafkaCodecError, KafkaFrame, ResponseKind};

/// True for the api keys whose responses name brokers.
pub fn names_brokers(api_key: ApiKey) -> bool {
    matches!(api_key, ApiKey::Metadata | ApiKey::FindCoordinator | ApiKey::DescribeCluster)
}

/// Rewrites the brokers of a whole response message (length prefix included) answering a
/// request of `api_key` at `api_version`. `None` when the message names no broker (another
/// api key) or already names only `host:port`, so the original bytes can be forwarded.
pub fn rewrite_brokers(
    response: &Bytes,
    api_key: ApiKey,
    api_version: i16,
    host: &str,
    port: i32,
) -> Result<Option<Bytes>, KafkaCodecError> {
    if !names_brokers(api_key) {
        return Ok(None);
    }
    let mut frame = KafkaFrame::parse_response(response, api_key, api_version)?;
    let KafkaFrame::Response { body, .. } = &mut frame else {
        return Ok(None);
    };
    if !rewrite_brokers_in(body, api_version, host, port) {
        return Ok(None);
    }
    frame.to_bytes().map(Some)
}

/// Rewrites the brokers of a parsed response body; false when nothing changed. An empty
/// `host` keeps each broker's own host and changes only the port (a proxy in front of each
/// broker, on the broker's machine).
///
/// FindCoordinator v0-3 names one coordinator at the top level, v4+ one per key in
/// `coordinators`. A coordinator entry that carries an error names no broker (node id -1,
/// empty host) and is left alone.
pub fn rewrite_brokers_in(body: &mut ResponseKind, api_version: i16, host: &str, port: i32) -> bool {
    let mut changed = false;
    let mut set = |h: &mut StrBytes, p: &mut i32| {
        if (!host.is_empty() && &**h != host) || *p != port {
            if !host.is_empty() {
                *h = StrBytes::from_string(host.to_owned());
            }
            *p = port;
            changed = true;
        }
    };
    match body {
        ResponseKind::Metadata(r) => r.brokers.iter_mut().for_each(|b| set(&mut b.host, &mut b.port)),
        ResponseKind::DescribeCluster(r) => r.brokers.iter_mut().for_each(|b| set(&mut b.host, &mut b.port)),
        ResponseKind::FindCoordinator(r) if api_version < 4 && r.error_code == 0 => set(&mut r.host, &mut r.port),
        ResponseKind::FindCoordinator(_) if api_version < 4 => {}
        ResponseKind::FindCoordinator(r) => {
            r.coordinators.iter_mut().filter(|c| c.error_code == 0).for_each(|c| set(&mut c.host, &mut c.port))
        }
        _ => {}
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::captured;
    use kafka_protocol::messages::describe_cluster_response::{DescribeClusterBroker, DescribeClusterResponse};
    use kafka_protocol::messages::{BrokerId, ResponseHeader};

    fn brokers(msg: &Bytes, api_key: ApiKey, version: i16) -> Vec<(String, i32)> {
        let Ok(KafkaFrame::Response { body, .. }) = KafkaFrame::parse_response(msg, api_key, version) else {
            panic!("does not parse");
        };
        match body {
            ResponseKind::Metadata(r) => r.brokers.iter().map(|b| (b.host.to_string(), b.port)).collect(),
            ResponseKind::DescribeCluster(r) => r.brokers.iter().map(|b| (b.host.to_string(), b.port)).collect(),
            ResponseKind::FindCoordinator(r) if version < 4 => vec![(r.host.to_string(), r.port)],
            ResponseKind::FindCoordinator(r) => r.coordinators.iter().map(|c| (c.host.to_string(), c.port)).collect(),
            _ => vec![],
        }
    }

    #[test]
    fn metadata_v12_1_rewrite() {
        let msg = Bytes::from_static(captured::METADATA_V12_RESPONSE);
        let out = rewrite_brokers(&msg, ApiKey::Metadata, 12, "proxy.example", 9192).unwrap().unwrap();
        assert_eq!(brokers(&out, ApiKey::Metadata, 12), vec![("proxy.example".to_owned(), 9192)]);
        // Everything else is untouched: the length changed by the host's length only.
        assert_eq!(out.len(), msg.len() + "proxy.example".len() - "127.0.0.1".len());
        assert_eq!(rewrite_brokers(&out, ApiKey::Metadata, 12, "proxy.example", 9192), Ok(None));
    }

    #[test]
    fn metadata_v7_1_rewrite() {
        let msg = Bytes::from_static(captured::METADATA_V7_RESPONSE);
        let out = rewrite_brokers(&msg, ApiKey::Metadata, 7, "10.0.0.1", 9092).unwrap().unwrap();
        assert_eq!(brokers(&out, ApiKey::Metadata, 7), vec![("10.0.0.1".to_owned(), 9092)]);
    }

    #[test]
    fn find_coordinator_v2_1_rewrite() {
        let msg = Bytes::from_static(captured::FIND_COORDINATOR_V2_RESPONSE);
        let out = rewrite_brokers(&msg, ApiKey::FindCoordinator, 2, "proxy", 1).unwrap().unwrap();
        assert_eq!(brokers(&out, ApiKey::FindCoordinator, 2), vec![("proxy".to_owned(), 1)]);
    }

    #[test]
    fn find_coordinator_v4_1_rewrite() {
        let msg = Bytes::from_static(captured::FIND_COORDINATOR_V4_RESPONSE);
        let out = rewrite_brokers(&msg, ApiKey::FindCoordinator, 4, "proxy", 1).unwrap().unwrap();
        assert_eq!(brokers(&out, ApiKey::FindCoordinator, 4), vec![("proxy".to_owned(), 1)]);
    }

    #[test]
    fn describe_cluster_v0_1_rewrite() {
        let broker = |id: i32, host: &'static str| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(id))
                .with_host(StrBytes::from_static_str(host))
                .with_port(9092)
        };
        let body = DescribeClusterResponse::default()
            .with_cluster_id(StrBytes::from_static_str("c"))
            .with_brokers(vec![broker(1, "kafka-1"), broker(2, "kafka-2")]);
        let frame = KafkaFrame::Response {
            api_key: ApiKey::DescribeCluster,
            api_version: 0,
            header: ResponseHeader::default().with_correlation_id(4),
            body: ResponseKind::DescribeCluster(body),
        };
        let msg = frame.to_bytes().unwrap();
        let out = rewrite_brokers(&msg, ApiKey::DescribeCluster, 0, "proxy", 9192).unwrap().unwrap();
        assert_eq!(
            brokers(&out, ApiKey::DescribeCluster, 0),
            vec![("proxy".to_owned(), 9192), ("proxy".to_owned(), 9192)]
        );
    }

    #[test]
    fn find_coordinator_v4_2_error_entries_kept() {
        use kafka_protocol::messages::find_coordinator_response::{Coordinator, FindCoordinatorResponse};
        let ok = Coordinator::default()
            .with_key(StrBytes::from_static_str("g"))
            .with_host(StrBytes::from_static_str("b1"))
            .with_port(9092);
        let failed = Coordinator::default()
            .with_key(StrBytes::from_static_str("h"))
            .with_node_id(BrokerId(-1))
            .with_port(-1)
            .with_error_code(15);
        let frame = KafkaFrame::Response {
            api_key: ApiKey::FindCoordinator,
            api_version: 4,
            header: ResponseHeader::default().with_correlation_id(9),
            body: ResponseKind::FindCoordinator(FindCoordinatorResponse::default().with_coordinators(vec![ok, failed])),
        };
        let msg = frame.to_bytes().unwrap();
        let out = rewrite_brokers(&msg, ApiKey::FindCoordinator, 4, "proxy", 1).unwrap().unwrap();
        assert_eq!(brokers(&out, ApiKey::FindCoordinator, 4), vec![("proxy".to_owned(), 1), (String::new(), -1)]);
    }

    #[test]
    fn other_responses_are_not_touched() {
        let msg = Bytes::from_static(captured::PRODUCE_V9_RESPONSE);
        assert_eq!(rewrite_brokers(&msg, ApiKey::Produce, 9, "proxy", 1), Ok(None));
        let bad = Bytes::from_static(&captured::METADATA_V12_RESPONSE[..30]);
        assert!(rewrite_brokers(&bad, ApiKey::Metadata, 12, "proxy", 1).is_err());
    }
}
