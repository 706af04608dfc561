//! Per-connection codec state: which request each response answers.
//!
//! A Kafka response carries only its request's correlation id, not its api key or version,
//! and both are needed to parse it. [`InFlightRequests`] records them as requests go
//! upstream and hands them back as responses return. A broker answers the requests of one
//! connection in order, so the match is almost always the oldest entry and costs O(1); an
//! out-of-order response (for example from a proxy that reorders) is found by a scan.

use std::collections::VecDeque;

use super::framing::response_correlation_id;
use super::header::request_ids;
use super::produce::expects_response;
use super::{ApiKey, KafkaCodecError};

/// One request waiting for its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingRequest {
    pub correlation_id: i32,
    /// The raw api key: requests of api keys this crate does not know are tracked too, so
    /// their responses can still be forwarded.
    pub api_key: i16,
    pub api_version: i16,
}

impl PendingRequest {
    /// The api key, if `kafka-protocol` knows it (needed to parse the response).
    pub fn known_api_key(&self) -> Result<ApiKey, KafkaCodecError> {
        ApiKey::try_from(self.api_key).map_err(|()| KafkaCodecError::UnknownApiKey(self.api_key))
    }
}

/// The requests of one connection still waiting for a response, oldest first.
#[derive(Debug, Clone, Default)]
pub struct InFlightRequests {
    pending: VecDeque<PendingRequest>,
}

impl InFlightRequests {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a whole request message on its way upstream. Returns the entry, or `None` for
    /// a request that gets no response (Produce with `acks = 0`), which is not recorded.
    pub fn record(&mut self, request: &[u8]) -> Result<Option<PendingRequest>, KafkaCodecError> {
        let ids = request_ids(request)?;
        if !expects_response(request)? {
            return Ok(None);
        }
        let pending =
            PendingRequest { correlation_id: ids.correlation_id, api_key: ids.api_key, api_version: ids.api_version };
        self.pending.push_back(pending);
        Ok(Some(pending))
    }

    /// Records a request whose ids are already known (for example one the proxy built).
    pub fn push(&mut self, pending: PendingRequest) {
        self.pending.push_back(pending);
    }

    /// Removes and returns the oldest request with this correlation id.
    pub fn take(&mut self, correlation_id: i32) -> Option<PendingRequest> {
        match self.pending.front() {
            Some(front) if front.correlation_id == correlation_id => self.pending.pop_front(),
            _ => {
                let index = self.pending.iter().position(|p| p.correlation_id == correlation_id)?;
                self.pending.remove(index)
            }
        }
    }

    /// Removes and returns the request that a whole response message answers.
    pub fn take_for_response(&mut self, response: &[u8]) -> Result<PendingRequest, KafkaCodecError> {
        let correlation_id = response_correlation_id(response)?;
        self.take(correlation_id).ok_or(KafkaCodecError::UnknownCorrelationId(correlation_id))
    }

    /// Requests still waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Forgets every pending request, for example when the upstream connection is lost and
    /// each of them has been answered with an error.
    pub fn drain(&mut self) -> impl Iterator<Item = PendingRequest> + '_ {
        self.pending.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::captured;

    #[test]
    fn produce_v9_1_in_flight() {
        let mut state = InFlightRequests::new();
        let api = state.record(captured::API_VERSIONS_V3_REQUEST).unwrap().unwrap();
        assert_eq!(api, PendingRequest { correlation_id: 1, api_key: 18, api_version: 3 });
        assert_eq!(state.record(captured::PRODUCE_V9_REQUEST_ACKS_0), Ok(None));
        let produce = state.record(captured::PRODUCE_V9_REQUEST_ACKS_1).unwrap().unwrap();
        assert_eq!(produce.known_api_key(), Ok(ApiKey::Produce));
        assert_eq!(state.len(), 2);

        assert_eq!(state.take_for_response(captured::API_VERSIONS_V3_RESPONSE), Ok(api));
        assert_eq!(state.take(produce.correlation_id), Some(produce));
        assert!(state.is_empty());
        assert_eq!(
            state.take_for_response(captured::API_VERSIONS_V3_RESPONSE),
            Err(KafkaCodecError::UnknownCorrelationId(1))
        );
    }

    #[test]
    fn out_of_order_and_duplicates() {
        let mut state = InFlightRequests::new();
        for (id, key) in [(5, 3), (6, 0), (5, 1)] {
            state.push(PendingRequest { correlation_id: id, api_key: key, api_version: 1 });
        }
        assert_eq!(state.take(6).map(|p| p.api_key), Some(0));
        assert_eq!(state.take(5).map(|p| p.api_key), Some(3));
        assert_eq!(state.take(5).map(|p| p.api_key), Some(1));
        assert_eq!(state.take(5), None);
        state.push(PendingRequest { correlation_id: 9, api_key: 999, api_version: 0 });
        assert_eq!(state.drain().next().map(|p| p.known_api_key()), Some(Err(KafkaCodecError::UnknownApiKey(999))));
        assert!(state.is_empty());
    }

    #[test]
    fn malformed_requests_are_not_recorded() {
        let mut state = InFlightRequests::new();
        assert!(state.record(&[0, 0, 0, 2, 0, 0]).is_err());
        assert!(state.record(&captured::PRODUCE_V9_REQUEST_ACKS_1[..20]).is_err());
        assert!(state.is_empty());
    }
}
