//! CassandraPeersRewrite: makes drivers connect to the proxy's port for every peer.
//!
//! ```yaml
//! - CassandraPeersRewrite:
//!     port: 9043
//! ```
//!
//! Rows of queries on `system.peers_v2` (and `system.peers`, where a table has such a
//! column) come back with `native_port` set to `port`. Only QUERY requests that name a peers
//! table are looked at; their answers are recognised by stream id, whenever they arrive.

use crate::chain::{BuildContext, ChainResult, ChainState, Transform, TransformBuilder, TransformConfig};
use crate::message::{Frame, Message, Protocol};
use anyhow::{bail, Result};
use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use shotover_protocols::cassandra::classify::query_text;
use shotover_protocols::cassandra::result::ResultBody;
use shotover_protocols::cassandra::{CassandraBody, Opcode};
use std::collections::HashSet;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CassandraPeersRewriteConfig {
    /// The port to write into `native_port`: usually the proxy's own.
    pub port: u16,
}

impl TransformConfig for CassandraPeersRewriteConfig {
    const NAME: &'static str = "CassandraPeersRewrite";
    const TERMINATING: bool = false;
    const PROTOCOLS: &'static [Protocol] = &[Protocol::Cassandra];
    fn validate(&mut self) -> Result<()> {
        if self.port == 0 {
            bail!("port must be a port number, 1 to 65535");
        }
        Ok(())
    }
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn TransformBuilder>> {
        let port = Bytes::from((i32::from(self.port)).to_be_bytes().to_vec());
        Ok(Box::new(move || CassandraPeersRewrite { port: port.clone(), waiting: HashSet::new() }))
    }
}

pub struct CassandraPeersRewrite {
    /// The port as a CQL `int` cell.
    port: Bytes,
    /// Stream ids of peers queries not answered yet.
    waiting: HashSet<i16>,
}

/// True for a statement that reads a peers table.
fn reads_peers(query: &str) -> bool {
    let lower = query.to_ascii_lowercase();
    let compact: String = lower.chars().filter(|c| !c.is_whitespace() && *c != '"').collect();
    compact.contains("fromsystem.peers")
}

impl CassandraPeersRewrite {
    fn note_request(&mut self, request: &mut Message) {
        let Some(header) = request.cql_header() else { return };
        if header.opcode != Opcode::Query {
            return;
        }
        let peers = match request.raw().and_then(|raw| query_text(raw)) {
            Some(text) => reads_peers(text),
            None => match request.frame() {
                Ok(Frame::Cassandra(frame)) => match &frame.body {
                    CassandraBody::Query(q) => reads_peers(&q.query),
                    _ => false,
                },
                _ => false,
            },
        };
        if peers {
            self.waiting.insert(header.stream_id);
        }
    }

    fn rewrite(&self, response: &mut Message) {
        let Ok(Frame::Cassandra(frame)) = response.frame() else { return };
        let CassandraBody::Result(ResultBody::Rows(rows)) = &frame.body else { return };
        let Some(column) = rows.column_index("native_port") else { return };
        let port = self.port.clone();
        if rows.rows.iter().all(|row| row.get(column).is_some_and(|c| c.as_ref() == Some(&port))) {
            return;
        }
        if let Ok(Frame::Cassandra(frame)) = response.frame_mut() {
            if let CassandraBody::Result(ResultBody::Rows(rows)) = &mut frame.body {
                for row in 0..rows.rows.len() {
                    let _ = rows.set_cell(row, column, Some(port.clone()));
                }
            }
        }
    }
}

#[async_trait(?Send)]
impl Transform for CassandraPeersRewrite {
    async fn transform(&mut self, state: &mut ChainState<'_>) -> ChainResult {
        for request in &mut state.requests {
            self.note_request(request);
        }
        let mut responses = state.call_next_transform().await?;
        if !self.waiting.is_empty() {
            for response in &mut responses {
                let Some(header) = response.cql_header() else { continue };
                if self.waiting.remove(&header.stream_id) {
                    self.rewrite(response);
                }
            }
        }
        Ok(responses)
    }
}

#[cfg(test)]
mod tests {
    use super::reads_peers;

    #[test]
    fn peers_queries_are_recognised() {
        assert!(reads_peers("SELECT * FROM system.peers_v2"));
        assert!(reads_peers("select peer, native_port from \"system\".\"peers_v2\" where x"));
        assert!(reads_peers("SELECT * FROM system.peers"));
        assert!(!reads_peers("SELECT * FROM system.local"));
    }
}
