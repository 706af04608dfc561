//! ValkeyClusterPortsRewrite: makes cluster-aware clients connect through the proxy by
//! replacing the port of every node in cluster topology replies with the proxy's port.
//!
//! ```yaml
//! - ValkeyClusterPortsRewrite:
//!     new_port: 6380
//! ```
//!
//! Rewritten: the replies to `CLUSTER SLOTS`, `CLUSTER NODES` (and `CLUSTER REPLICAS`/`SLAVES`,
//! which share its format) and `CLUSTER SHARDS`, and every `MOVED` and `ASK` redirection.
//! The node addresses are kept, so the proxy must listen on `new_port` beside each node.

use crate::chain::{BuildContext, ChainResult, ChainState, Transform, TransformBuilder, TransformConfig};
use crate::message::{Frame, Message, Protocol};
use anyhow::Result;
use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use shotover_protocols::valkey::command::request_args;
use shotover_protocols::valkey::ValkeyFrame;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValkeyClusterPortsRewriteConfig {
    /// The port written into topology replies and redirections.
    pub new_port: u16,
}

impl TransformConfig for ValkeyClusterPortsRewriteConfig {
    const NAME: &'static str = "ValkeyClusterPortsRewrite";
    const TERMINATING: bool = false;
    const PROTOCOLS: &'static [Protocol] = &[Protocol::Valkey];
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn TransformBuilder>> {
        let new_port = self.new_port;
        Ok(Box::new(move || ValkeyClusterPortsRewrite { new_port }))
    }
}

/// Which topology reply a request asks for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Topology {
    Slots,
    Nodes,
    Shards,
}

fn topology_request(request: &Message) -> Option<Topology> {
    let view = request.valkey_request()?;
    if !view.is("CLUSTER") || view.argc == 0 {
        return None;
    }
    let args = request_args(request.raw()?);
    let sub = args.first()?.to_ascii_uppercase();
    match sub.as_slice() {
        b"SLOTS" => Some(Topology::Slots),
        b"NODES" | b"REPLICAS" | b"SLAVES" => Some(Topology::Nodes),
        b"SHARDS" => Some(Topology::Shards),
        _ => None,
    }
}

pub struct ValkeyClusterPortsRewrite {
    new_port: u16,
}

#[async_trait(?Send)]
impl Transform for ValkeyClusterPortsRewrite {
    async fn transform(&mut self, state: &mut ChainState<'_>) -> ChainResult {
        // Rare: only batches that ask for the topology pay for this.
        let asks: Vec<(usize, Topology)> =
            state.requests.iter().enumerate().filter_map(|(i, r)| topology_request(r).map(|t| (i, t))).collect();
        let mut responses = state.call_next_transform().await?;
        for (i, kind) in asks {
            if let Some(response) = responses.get_mut(i) {
                self.rewrite_topology(response, kind);
            }
        }
        for response in &mut responses {
            if response.raw().is_some_and(|r| r.starts_with(b"-MOVED ") || r.starts_with(b"-ASK ")) {
                self.rewrite_redirection(response);
            }
        }
        Ok(responses)
    }
}

impl ValkeyClusterPortsRewrite {
    fn rewrite_topology(&self, response: &mut Message, kind: Topology) {
        let port = i64::from(self.new_port);
        let Ok(Frame::Valkey(frame)) = response.frame_mut() else { return };
        match kind {
            Topology::Slots => {
                if let ValkeyFrame::Array { data: ranges, .. } = frame {
                    for range in ranges {
                        if let ValkeyFrame::Array { data: fields, .. } = range {
                            // [start, end, node, node, ...]; each node is [ip, port, id, ...].
                            for node in fields.iter_mut().skip(2) {
                                if let ValkeyFrame::Array { data: node, .. } = node {
                                    if let Some(ValkeyFrame::Number { data, .. }) = node.get_mut(1) {
                                        *data = port;
                                    }
                                }
                            }
                        }
                    }
                }
            }
            Topology::Nodes => match frame {
                ValkeyFrame::BlobString { data, .. } | ValkeyFrame::VerbatimString { data, .. } => {
                    *data = rewrite_nodes_text(data, self.new_port);
                }
                _ => {}
            },
            Topology::Shards => {
                let ValkeyFrame::Array { data: shards, .. } = frame else { return };
                for shard in shards {
                    let Some(ValkeyFrame::Array { data: nodes, .. }) = field_mut(shard, b"nodes") else { continue };
                    for node in nodes {
                        for key in [&b"port"[..], b"tls-port"] {
                            if let Some(ValkeyFrame::Number { data, .. }) = field_mut(node, key) {
                                *data = port;
                            }
                        }
                    }
                }
            }
        }
    }

    /// `-MOVED 3999 10.0.0.2:6379` → `-MOVED 3999 10.0.0.2:<new_port>`.
    fn rewrite_redirection(&self, response: &mut Message) {
        let Ok(Frame::Valkey(ValkeyFrame::SimpleError { data, .. })) = response.frame_mut() else { return };
        let mut parts: Vec<String> = data.split(' ').map(str::to_string).collect();
        if let Some(address) = parts.get_mut(2) {
            if let Some((host, _)) = address.rsplit_once(':') {
                *address = format!("{host}:{}", self.new_port);
            }
        }
        *data = parts.join(" ").into();
    }
}

/// The value of `key` in a map reply (RESP3 map, or RESP2 flat key/value array).
fn field_mut<'a>(frame: &'a mut ValkeyFrame, key: &[u8]) -> Option<&'a mut ValkeyFrame> {
    let is_key = |f: &ValkeyFrame| match f {
        ValkeyFrame::BlobString { data, .. } | ValkeyFrame::SimpleString { data, .. } => data.as_ref() == key,
        _ => false,
    };
    match frame {
        ValkeyFrame::Array { data, .. } => {
            let index = data.iter().step_by(2).position(is_key)?;
            data.get_mut(index * 2 + 1)
        }
        ValkeyFrame::Map { data, .. } => data.iter_mut().find(|(k, _)| is_key(k)).map(|(_, v)| v),
        _ => None,
    }
}

/// Rewrites the `ip:port@cport[,hostname]` field of every `CLUSTER NODES` line.
fn rewrite_nodes_text(text: &Bytes, new_port: u16) -> Bytes {
    let text = String::from_utf8_lossy(text);
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let mut fields: Vec<&str> = line.splitn(3, ' ').collect();
        let rewritten;
        if let Some(address) = fields.get(1) {
            let (host_port, rest) = address.split_once('@').map_or((*address, None), |(a, r)| (a, Some(r)));
            if let Some((host, _)) = host_port.rsplit_once(':') {
                rewritten = match rest {
                    Some(rest) => format!("{host}:{new_port}@{rest}"),
                    None => format!("{host}:{new_port}"),
                };
                fields[1] = &rewritten;
            }
        }
        out.push_str(&fields.join(" "));
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_lines_keep_everything_but_the_port() {
        let text = Bytes::from_static(
            b"07c37 127.0.0.1:30004@40004,host-a slave e7d1e 0 1 4 connected\n67ed2 127.0.0.1:30002@40002 master - 0 1 2 connected 5461-10922\n",
        );
        let out = rewrite_nodes_text(&text, 6380);
        assert_eq!(
            &out[..],
            b"07c37 127.0.0.1:6380@40004,host-a slave e7d1e 0 1 4 connected\n67ed2 127.0.0.1:6380@40002 master - 0 1 2 connected 5461-10922\n"
        );
    }
}
