//! The error codes of the responses the proxy answers itself, and which to use when.
//!
//! Every request must get a response (a client waits for each correlation id), including
//! one a transform refused or one whose upstream failed. [`super::safe_error`] builds those
//! responses without decoding the client's request with `kafka-protocol`.
//!
//! Which code to use:
//! - [`FILTERED`] = POLICY_VIOLATION (44) for a request refused by QueryTypeFilter. It says
//!   what happened (a policy of the service refused the request, as brokers say for their
//!   create-topic and alter-config policies) and is not retriable, so clients fail the
//!   call instead of retrying it forever. CLUSTER_AUTHORIZATION_FAILED (31) was rejected: it
//!   sends operators looking for an ACL problem, and the Java producer treats it as fatal
//!   for the whole producer, not just the refused call.
//! - [`THROTTLING_QUOTA_EXCEEDED`] (89) for RequestThrottling; also set `throttle_time_ms`
//!   with [`super::api::set_throttle_time_ms`] so the client backs off.
//! - [`UPSTREAM_UNAVAILABLE`] and [`UPSTREAM_TIMED_OUT`], both REQUEST_TIMED_OUT (7), when
//!   the upstream connection failed or closed, or did not answer in time. The request may or
//!   may not have been carried out, which is what 7 tells every client: the Java client and
//!   kafka-python retry it, and librdkafka retries it as "possibly persisted" (an
//!   idempotent producer's retry is deduplicated by the broker). NETWORK_EXCEPTION (13) was
//!   used before and was wrong: no broker sends it (clients make it up for a lost
//!   connection), and librdkafka takes it in a Produce response as a permanent failure, so a
//!   confluent-kafka producer lost every record in flight when a broker restarted behind the
//!   proxy, records that it retries and delivers without the proxy.
//!
//! A Produce request with `acks = 0` must get no response at all: check
//! [`super::produce::expects_response`] first.
//!
//! Client behaviour worth knowing: a Fetch response with a top-level error (v7+) makes the
//! Java consumer drop the whole response, reset its fetch session and retry after a
//! backoff, ignoring the per-partition codes; Metadata responses without brokers are
//! ignored and retried.

use kafka_protocol::ResponseError;

/// REQUEST_TIMED_OUT (7): the upstream did not answer in time. Retriable.
pub const REQUEST_TIMED_OUT: i16 = ResponseError::RequestTimedOut.code();
/// NETWORK_EXCEPTION (13): what clients make up for a lost connection; never sent (see above).
pub const NETWORK_EXCEPTION: i16 = ResponseError::NetworkException.code();
/// CLUSTER_AUTHORIZATION_FAILED (31). Not retriable.
pub const CLUSTER_AUTHORIZATION_FAILED: i16 = ResponseError::ClusterAuthorizationFailed.code();
/// POLICY_VIOLATION (44). Not retriable.
pub const POLICY_VIOLATION: i16 = ResponseError::PolicyViolation.code();
/// THROTTLING_QUOTA_EXCEEDED (89). Retriable after `throttle_time_ms`.
pub const THROTTLING_QUOTA_EXCEEDED: i16 = ResponseError::ThrottlingQuotaExceeded.code();

/// The code for a request refused by QueryTypeFilter (see the module doc).
pub const FILTERED: i16 = POLICY_VIOLATION;
/// The code for a request whose upstream connection failed.
pub const UPSTREAM_UNAVAILABLE: i16 = REQUEST_TIMED_OUT;
/// The code for a request whose upstream did not answer in time.
pub const UPSTREAM_TIMED_OUT: i16 = REQUEST_TIMED_OUT;
