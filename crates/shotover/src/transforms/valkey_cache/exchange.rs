//! The Valkey side of a batch: its lookups before Cassandra is asked, and its fills and
//! invalidations after Cassandra has answered, each in one run of the cache sub-chain.

use super::store::{self, Found, Generations};
use super::{key, ValkeyCache, Waiting};
use crate::chain::ChainState;
use crate::message::Message;
use bytes::{Bytes, BytesMut};
use futures_lite::future;
use shotover_protocols::cassandra::Compression;
use std::time::{Duration, Instant};

/// How long one run of the cache sub-chain may take: past it, Valkey counts as failed and
/// the connection to it is dropped.
pub(super) const CACHE_TIMEOUT: Duration = Duration::from_secs(1);

/// A read to look up.
pub(super) struct Lookup {
    pub(super) entry: usize,
    pub(super) partition: Vec<u8>,
    pub(super) field: Vec<u8>,
}

/// What to invalidate after a write.
#[derive(Debug, Clone)]
pub(super) enum Target {
    Partition { entry: usize, key: Vec<u8> },
    Table(usize),
}

impl Target {
    pub(super) fn entry(&self) -> usize {
        match self {
            Target::Partition { entry, .. } | Target::Table(entry) => *entry,
        }
    }
}

/// What is asked of Valkey once Cassandra has answered.
pub(super) enum Post {
    Fill { lookup: Lookup, gens: Generations, frame: Bytes },
    Invalidate(Target),
}

/// A stored answer, as the answer to `request`.
fn hit(request: &Message, stream_id: i16, frame: &Bytes) -> Message {
    let mut bytes = BytesMut::from(&frame[..]);
    if let Some(id) = bytes.get_mut(2..4) {
        id.copy_from_slice(&stream_id.to_be_bytes());
    }
    let mut answer = Message::from_cql(bytes.freeze(), Compression::None, Instant::now());
    answer.set_request_id(request.id());
    answer
}

impl ValkeyCache {
    fn table_key(&self, entry: usize) -> Vec<u8> {
        self.shared.entries.get(entry).map(|e| key::table(&e.name)).unwrap_or_default()
    }

    /// Runs `commands` on the cache, after the whole-table invalidations pending, and
    /// returns their replies; `None` when the cache cannot be used: it is down, or failed
    /// now (an error reply to any command counts: the batch is treated as one).
    async fn ask(&mut self, mut commands: Vec<Message>) -> Option<Vec<Message>> {
        let shared = self.shared.clone();
        if !shared.health.usable() {
            return None;
        }
        let dirty = shared.dirty();
        let mut all: Vec<Message> = dirty.iter().map(|(e, _)| store::invalidate_table(&self.table_key(*e))).collect();
        let skip = all.len();
        all.append(&mut commands);
        let count = all.len();
        let cache = &mut self.cache;
        let run = async { Some(cache.process_complete(all).await) };
        let timeout = async {
            crate::rt::sleep(CACHE_TIMEOUT).await;
            None
        };
        let mut replies = match future::or(run, timeout).await {
            Some(Ok(replies)) => replies,
            Some(Err(e)) => return self.failed(&e.to_string()),
            None => {
                // Its answers may still come: a new sub-chain, so that they are never
                // taken for the answers of later commands.
                self.cache = self.builder.build();
                return self.failed(&format!("no answer within {CACHE_TIMEOUT:?}"));
            }
        };
        replies.retain(|r| !r.is_pushed());
        if replies.len() != count {
            return self.failed("the cache chain answered a different number of commands");
        }
        for reply in &mut replies {
            if let Err(e) = store::succeeded(reply) {
                return self.failed(&e);
            }
        }
        shared.clean(&dirty);
        shared.invalidations.inc_by(skip as u64);
        Some(replies.split_off(skip))
    }

    /// Valkey failed: from now on it may have lost invalidations (or come back from an
    /// older snapshot), so every table is invalidated whole before it is used again.
    fn failed<T>(&self, why: &str) -> Option<T> {
        self.shared.mark_all_dirty();
        self.shared.health.failed(why);
        None
    }

    /// Looks reads up: hits are answered, misses (and all when the cache fails) go on.
    pub(super) async fn look_up(
        &mut self,
        lookups: Vec<(Message, Lookup)>,
        state: &mut ChainState<'_>,
        answers: &mut Vec<Message>,
    ) {
        let commands: Vec<Message> =
            lookups.iter().map(|(_, l)| store::lookup(&l.partition, &self.table_key(l.entry), &l.field)).collect();
        let count = commands.len() as u64;
        let Some(mut replies) = self.ask(commands).await else {
            self.shared.errors.inc_by(count);
            state.requests.extend(lookups.into_iter().map(|(r, _)| r));
            return;
        };
        let found: Result<Vec<Found>, String> = replies.iter_mut().map(store::found).collect();
        let found = match found {
            Ok(found) => found,
            Err(e) => {
                self.shared.errors.inc_by(count);
                self.failed::<()>(&e);
                state.requests.extend(lookups.into_iter().map(|(r, _)| r));
                return;
            }
        };
        self.shared.health.worked();
        for ((request, lookup), found) in lookups.into_iter().zip(found) {
            let Some(header) = request.cql_header() else { continue };
            match found {
                Found::Hit(frame) => {
                    self.shared.hits.inc();
                    answers.push(hit(&request, header.stream_id, &frame));
                }
                Found::Miss(gens) => {
                    self.shared.misses.inc();
                    self.waiting.insert(header.stream_id, Waiting::Fill { lookup, gens });
                    state.requests.push(request);
                }
            }
        }
    }

    /// Stores answers and invalidates what writes changed, before their answers go back.
    pub(super) async fn post(&mut self, posts: Vec<Post>) {
        let commands: Vec<Message> = posts
            .iter()
            .map(|p| match p {
                Post::Fill { lookup, gens, frame } => {
                    store::fill(&lookup.partition, &self.table_key(lookup.entry), &lookup.field, gens, frame)
                }
                Post::Invalidate(Target::Partition { key, .. }) => store::invalidate(key),
                Post::Invalidate(Target::Table(entry)) => store::invalidate_table(&self.table_key(*entry)),
            })
            .collect();
        let count = commands.len() as u64;
        let shared = self.shared.clone();
        if self.ask(commands).await.is_some() {
            shared.health.worked();
            let invalidations = posts.iter().filter(|p| matches!(p, Post::Invalidate(_))).count();
            shared.invalidations.inc_by(invalidations as u64);
            return;
        }
        shared.errors.inc_by(count);
        // Every table is invalidated whole before the cache is used again (see `failed`).
        shared.mark_all_dirty();
    }
}
