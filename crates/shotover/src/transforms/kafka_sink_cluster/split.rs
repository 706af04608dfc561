//! Requests about partitions (Produce, Fetch, ListOffsets, OffsetForLeaderEpoch,
//! DeleteRecords) go to each partition's leader: one request per leader, each with that
//! leader's partitions, and one response merged from theirs, in the client's version.
//!
//! Fetch is always sent without a fetch session (session id 0, epoch -1): a session lives
//! on one broker, while the client's partitions are spread over several. The broker then
//! answers with session id 0, which tells the client to send full fetches from then on.

use super::metadata::TopicKey;
use shotover_protocols::kafka::kafka_protocol::messages::{
    delete_records_response, fetch_response, list_offsets_response, offset_for_leader_epoch_response, produce_response,
    RequestKind, ResponseKind,
};
use std::rc::Rc;

/// Where a partition's requests go: its leader's broker id, `None` when unknown.
pub(super) type Destination = Option<i32>;

/// Splits `topics` by the leader of each of their partitions, keeping the order of topics
/// and partitions within each destination.
fn by_leader<T: Clone, P>(
    topics: Vec<T>,
    leader: &dyn Fn(&TopicKey, i32) -> Destination,
    key: impl Fn(&T) -> TopicKey,
    partitions: impl Fn(&mut T) -> &mut Vec<P>,
    index: impl Fn(&P) -> i32,
) -> Vec<(Destination, Vec<T>)> {
    // Per destination: its topics, and which of the request's topics is its last one.
    let mut out: Vec<(Destination, Vec<T>, usize)> = Vec::new();
    for (n, mut topic) in topics.into_iter().enumerate() {
        let key = key(&topic);
        for p in std::mem::take(partitions(&mut topic)) {
            let to = leader(&key, index(&p));
            let i = out.iter().position(|(d, _, _)| *d == to).unwrap_or_else(|| {
                out.push((to, Vec::new(), usize::MAX));
                out.len() - 1
            });
            let Some(group) = out.get_mut(i) else { continue };
            if group.2 != n {
                group.1.push(topic.clone());
                group.2 = n;
            }
            if let Some(t) = group.1.last_mut() {
                partitions(t).push(p);
            }
        }
    }
    out.into_iter().map(|(d, topics, _)| (d, topics)).collect()
}

fn named(name: &[u8], id: &[u8; 16]) -> TopicKey {
    if name.is_empty() && *id != [0; 16] {
        TopicKey::Id(*id)
    } else {
        TopicKey::Name(Rc::from(String::from_utf8_lossy(name).as_ref()))
    }
}

/// The topics a routed request is about.
pub(super) fn topics_of(body: &RequestKind) -> Vec<TopicKey> {
    match body {
        RequestKind::Produce(r) => {
            r.topic_data.iter().map(|t| named(t.name.0.as_bytes(), t.topic_id.as_bytes())).collect()
        }
        RequestKind::Fetch(r) => r.topics.iter().map(|t| named(t.topic.0.as_bytes(), t.topic_id.as_bytes())).collect(),
        RequestKind::ListOffsets(r) => r.topics.iter().map(|t| named(t.name.0.as_bytes(), &[0; 16])).collect(),
        RequestKind::OffsetForLeaderEpoch(r) => {
            r.topics.iter().map(|t| named(t.topic.0.as_bytes(), &[0; 16])).collect()
        }
        RequestKind::DeleteRecords(r) => r.topics.iter().map(|t| named(t.name.0.as_bytes(), &[0; 16])).collect(),
        _ => Vec::new(),
    }
}

/// Splits a routed request into one per destination (a single one when all its partitions
/// go to the same broker). `None` for requests that are not split.
pub(super) fn split(
    mut body: RequestKind,
    leader: &dyn Fn(&TopicKey, i32) -> Destination,
) -> Option<Vec<(Destination, RequestKind)>> {
    macro_rules! split_into {
        ($variant:ident, $r:ident, $topics:ident, $key:expr, $parts:ident, $index:ident) => {{
            let topics = std::mem::take(&mut $r.$topics);
            let mut groups = by_leader(topics, leader, $key, |t| &mut t.$parts, |p| p.$index);
            if groups.is_empty() {
                // No topics (a Fetch that only waits): one part, to any broker.
                groups.push((None, Vec::new()));
            }
            groups
                .into_iter()
                .map(|(d, topics)| {
                    let mut part = $r.clone();
                    part.$topics = topics;
                    (d, RequestKind::$variant(part))
                })
                .collect()
        }};
    }
    Some(match &mut body {
        RequestKind::Produce(r) => {
            split_into!(
                Produce,
                r,
                topic_data,
                |t| named(t.name.0.as_bytes(), t.topic_id.as_bytes()),
                partition_data,
                index
            )
        }
        RequestKind::Fetch(r) => {
            r.session_id = 0;
            r.session_epoch = -1;
            r.forgotten_topics_data.clear();
            // The client's rack would have a rack-aware broker name a follower to fetch from
            // (preferred_read_replica), which the proxy would not follow: fetch from leaders.
            r.rack_id = Default::default();
            split_into!(Fetch, r, topics, |t| named(t.topic.0.as_bytes(), t.topic_id.as_bytes()), partitions, partition)
        }
        RequestKind::ListOffsets(r) => {
            split_into!(ListOffsets, r, topics, |t| named(t.name.0.as_bytes(), &[0; 16]), partitions, partition_index)
        }
        RequestKind::OffsetForLeaderEpoch(r) => {
            split_into!(
                OffsetForLeaderEpoch,
                r,
                topics,
                |t| named(t.topic.0.as_bytes(), &[0; 16]),
                partitions,
                partition
            )
        }
        RequestKind::DeleteRecords(r) => {
            split_into!(DeleteRecords, r, topics, |t| named(t.name.0.as_bytes(), &[0; 16]), partitions, partition_index)
        }
        _ => return None,
    })
}

/// Appends `more`'s topics to `into`'s, joining the partitions of a topic both have.
fn join<T, P>(into: &mut Vec<T>, more: Vec<T>, same: impl Fn(&T, &T) -> bool, parts: impl Fn(&mut T) -> &mut Vec<P>) {
    for mut topic in more {
        match into.iter_mut().find(|t| same(t, &topic)) {
            Some(existing) => {
                let moved = std::mem::take(parts(&mut topic));
                parts(existing).extend(moved);
            }
            None => into.push(topic),
        }
    }
}

/// Merges the responses to the parts of a split request into one; `None` if a part is of
/// another api key than the first.
pub(super) fn merge(parts: Vec<ResponseKind>) -> Option<ResponseKind> {
    let mut parts = parts.into_iter();
    let mut out = parts.next()?;
    for part in parts {
        match (&mut out, part) {
            (ResponseKind::Produce(a), ResponseKind::Produce(b)) => {
                a.throttle_time_ms = a.throttle_time_ms.max(b.throttle_time_ms);
                let same = |x: &_, y: &_| topic_eq(x, y);
                join(&mut a.responses, b.responses, same, |t| &mut t.partition_responses);
            }
            (ResponseKind::Fetch(a), ResponseKind::Fetch(b)) => {
                a.throttle_time_ms = a.throttle_time_ms.max(b.throttle_time_ms);
                if a.error_code == 0 {
                    a.error_code = b.error_code;
                }
                let same = |x: &fetch_response::FetchableTopicResponse, y: &fetch_response::FetchableTopicResponse| {
                    x.topic == y.topic && x.topic_id == y.topic_id
                };
                join(&mut a.responses, b.responses, same, |t| &mut t.partitions);
            }
            (ResponseKind::ListOffsets(a), ResponseKind::ListOffsets(b)) => {
                a.throttle_time_ms = a.throttle_time_ms.max(b.throttle_time_ms);
                join(&mut a.topics, b.topics, |x, y| x.name == y.name, |t| &mut t.partitions);
            }
            (ResponseKind::OffsetForLeaderEpoch(a), ResponseKind::OffsetForLeaderEpoch(b)) => {
                a.throttle_time_ms = a.throttle_time_ms.max(b.throttle_time_ms);
                join(&mut a.topics, b.topics, |x, y| x.topic == y.topic, |t| &mut t.partitions);
            }
            (ResponseKind::DeleteRecords(a), ResponseKind::DeleteRecords(b)) => {
                a.throttle_time_ms = a.throttle_time_ms.max(b.throttle_time_ms);
                join(&mut a.topics, b.topics, |x, y| x.name == y.name, |t| &mut t.partitions);
            }
            _ => return None,
        }
    }
    if let ResponseKind::Fetch(r) = &mut out {
        r.session_id = 0;
    }
    Some(out)
}

/// The topics of a partition response with a partition whose error code is in `errors`.
pub(super) fn stale_topics(body: &ResponseKind, errors: &[i16]) -> Vec<TopicKey> {
    let mut out = Vec::new();
    macro_rules! scan {
        ($topics:expr, $key:expr, $parts:ident) => {
            for t in $topics {
                let key = $key(t);
                if t.$parts.iter().any(|p| errors.contains(&p.error_code)) && !out.contains(&key) {
                    out.push(key);
                }
            }
        };
    }
    match body {
        ResponseKind::Produce(r) => {
            scan!(
                &r.responses,
                |t: &produce_response::TopicProduceResponse| named(t.name.0.as_bytes(), t.topic_id.as_bytes()),
                partition_responses
            )
        }
        ResponseKind::Fetch(r) => {
            scan!(
                &r.responses,
                |t: &fetch_response::FetchableTopicResponse| named(t.topic.0.as_bytes(), t.topic_id.as_bytes()),
                partitions
            )
        }
        ResponseKind::ListOffsets(r) => {
            scan!(
                &r.topics,
                |t: &list_offsets_response::ListOffsetsTopicResponse| named(t.name.0.as_bytes(), &[0; 16]),
                partitions
            )
        }
        ResponseKind::OffsetForLeaderEpoch(r) => scan!(
            &r.topics,
            |t: &offset_for_leader_epoch_response::OffsetForLeaderTopicResult| named(t.topic.0.as_bytes(), &[0; 16]),
            partitions
        ),
        ResponseKind::DeleteRecords(r) => {
            scan!(
                &r.topics,
                |t: &delete_records_response::DeleteRecordsTopicResult| named(t.name.0.as_bytes(), &[0; 16]),
                partitions
            )
        }
        _ => {}
    }
    out
}

fn topic_eq(x: &produce_response::TopicProduceResponse, y: &produce_response::TopicProduceResponse) -> bool {
    x.name == y.name && x.topic_id == y.topic_id
}

#[cfg(test)]
mod tests {
    use super::*;
    use shotover_protocols::kafka::kafka_protocol::messages::produce_request::*;
    use shotover_protocols::kafka::kafka_protocol::messages::produce_response::*;
    use shotover_protocols::kafka::kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
    use shotover_protocols::kafka::kafka_protocol::protocol::StrBytes;

    fn name(s: &'static str) -> TopicName {
        TopicName(StrBytes::from_static_str(s))
    }

    #[test]
    fn produce_is_split_by_leader_and_merged_back() {
        let topic = |n, parts: &[i32]| {
            TopicProduceData::default()
                .with_name(name(n))
                .with_partition_data(parts.iter().map(|i| PartitionProduceData::default().with_index(*i)).collect())
        };
        let request =
            ProduceRequest::default().with_acks(-1).with_topic_data(vec![topic("a", &[0, 1, 2]), topic("b", &[0])]);
        // Partition p of any topic is led by broker p % 2; b is unknown.
        let leader = |k: &TopicKey, p: i32| match k {
            TopicKey::Name(n) if &**n == "a" => Some(p % 2),
            _ => None,
        };
        let parts = split(RequestKind::Produce(request), &leader).unwrap();
        type Summary = Vec<(Destination, Vec<(String, Vec<i32>)>)>;
        let summary: Summary = parts
            .iter()
            .map(|(d, body)| {
                let RequestKind::Produce(r) = body else { unreachable!() };
                assert_eq!(r.acks, -1, "the rest of the request is kept");
                let topics = r
                    .topic_data
                    .iter()
                    .map(|t| (t.name.0.to_string(), t.partition_data.iter().map(|p| p.index).collect()));
                (*d, topics.collect())
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (Some(0), vec![("a".to_owned(), vec![0, 2])]),
                (Some(1), vec![("a".to_owned(), vec![1])]),
                (None, vec![("b".to_owned(), vec![0])]),
            ]
        );
        let answer = |t, parts: &[i32], throttle| {
            ResponseKind::Produce(ProduceResponse::default().with_throttle_time_ms(throttle).with_responses(vec![
                TopicProduceResponse::default().with_name(name(t)).with_partition_responses(
                    parts.iter().map(|i| PartitionProduceResponse::default().with_index(*i)).collect(),
                ),
            ]))
        };
        let merged = merge(vec![answer("a", &[0, 2], 0), answer("a", &[1], 5), answer("b", &[0], 1)]).unwrap();
        let ResponseKind::Produce(r) = merged else { unreachable!() };
        assert_eq!(r.throttle_time_ms, 5);
        let got: Vec<(String, Vec<i32>)> = r
            .responses
            .iter()
            .map(|t| (t.name.0.to_string(), t.partition_responses.iter().map(|p| p.index).collect()))
            .collect();
        assert_eq!(got, vec![("a".to_owned(), vec![0, 2, 1]), ("b".to_owned(), vec![0])]);
    }

    /// A partition error saying the leader moved names its topic once; other errors none.
    #[test]
    fn leader_errors_name_their_topics() {
        let answer = |t, codes: &[i16]| {
            TopicProduceResponse::default().with_name(name(t)).with_partition_responses(
                codes.iter().map(|c| PartitionProduceResponse::default().with_error_code(*c)).collect(),
            )
        };
        let body = ResponseKind::Produce(ProduceResponse::default().with_responses(vec![
            answer("a", &[0, 6, 6]),
            answer("b", &[0, 87]),
            answer("c", &[74]),
        ]));
        assert_eq!(stale_topics(&body, &[6, 74]), vec![TopicKey::Name("a".into()), TopicKey::Name("c".into())]);
    }

    #[test]
    fn fetch_loses_its_session() {
        use shotover_protocols::kafka::kafka_protocol::messages::fetch_request::*;
        use shotover_protocols::kafka::kafka_protocol::messages::FetchRequest;
        let request = FetchRequest::default()
            .with_session_id(7)
            .with_session_epoch(3)
            .with_topics(vec![FetchTopic::default()
                .with_topic(name("a"))
                .with_partitions(vec![FetchPartition::default()])])
            .with_forgotten_topics_data(vec![ForgottenTopic::default()]);
        let parts = split(RequestKind::Fetch(request.clone()), &|_, _| Some(4)).unwrap();
        let [(Some(4), RequestKind::Fetch(r))] = &parts[..] else { panic!("one part: {parts:?}") };
        assert_eq!((r.session_id, r.session_epoch, r.forgotten_topics_data.len()), (0, -1, 0));
        // Without topics too.
        let parts = split(RequestKind::Fetch(request.with_topics(vec![])), &|_, _| Some(4)).unwrap();
        let [(None, RequestKind::Fetch(r))] = &parts[..] else { panic!("one part: {parts:?}") };
        assert_eq!((r.session_id, r.session_epoch), (0, -1));
    }
}
