//! Answers a transform makes itself (a filtered or refused request), put among the answers
//! from further down the chain in request order, even when those arrive in a later run.
//!
//! Valkey and Kafka clients pair answers with requests by position. What lies below may
//! hold requests and answer them in a later run (Coalesce does; KafkaSinkSingle returns
//! answers as the broker sends them), so an answer made here waits until every request
//! before it has been answered from below. Not for CQL, whose answers carry stream ids.

use crate::chain::{ChainResult, ChainState};
use crate::message::Message;
use std::collections::VecDeque;

#[derive(Default)]
pub struct InOrder {
    /// Answers owed from below for requests sent down before any answer of this
    /// transform's own was waiting: they come first.
    lead: usize,
    /// After those, one entry per request that expects an answer, oldest first: `Some`
    /// holds this transform's own answer, `None` stands for a request sent on down.
    slots: VecDeque<Option<Message>>,
    /// Entries of `slots` that are `None`.
    below: usize,
}

impl InOrder {
    /// True when no answer of this transform's own is waiting for its turn.
    pub fn is_idle(&self) -> bool {
        self.slots.is_empty()
    }

    /// True when requests sent down are still unanswered.
    pub fn waits_below(&self) -> bool {
        self.lead > 0 || self.below > 0
    }

    /// `request` goes on down the chain.
    pub fn passed_down(&mut self, request: &Message) {
        if !request.expects_response() {
            return;
        }
        if self.slots.is_empty() {
            self.lead += 1;
        } else {
            self.slots.push_back(None);
            self.below += 1;
        }
    }

    /// This transform answers a request itself with `answer`.
    pub fn answered_here(&mut self, answer: Message) {
        self.slots.push_back(Some(answer));
    }

    /// The chain failed: the source answers every waiting request itself, so nothing held
    /// here may be sent any more, and nothing more is owed from below.
    pub fn clear(&mut self) {
        *self = InOrder::default();
    }

    /// Runs the rest of the chain. If it fails, the source answers every waiting request
    /// itself, so what is held here is dropped.
    pub async fn run_below(&mut self, state: &mut ChainState<'_>) -> ChainResult {
        let result = state.call_next_transform().await;
        if result.is_err() {
            self.clear();
        }
        result
    }

    /// Takes the answers that came up from below and returns every answer now due, in
    /// request order; anything beyond the requests sent down is unsolicited and goes last
    /// (pub/sub messages; they are taken for answers if they arrive while some are owed,
    /// which can only let this transform's own answers out early).
    pub fn merge(&mut self, from_below: Vec<Message>) -> Vec<Message> {
        if self.slots.is_empty() {
            // The common case: nothing of ours waits, the answers pass as they are.
            let answers = from_below.iter().filter(|m| !m.is_pushed()).count();
            self.lead = self.lead.saturating_sub(answers);
            return from_below;
        }
        let mut below = from_below.into_iter();
        let mut out = Vec::with_capacity(self.slots.len());
        // The next answer from below; pushed messages met on the way go out where they are.
        let mut next_answer = |out: &mut Vec<Message>| {
            for message in below.by_ref() {
                if !message.is_pushed() {
                    return Some(message);
                }
                out.push(message);
            }
            None
        };
        while self.lead > 0 {
            match next_answer(&mut out) {
                Some(answer) => {
                    self.lead -= 1;
                    out.push(answer);
                }
                None => return out,
            }
        }
        while let Some(front) = self.slots.front_mut() {
            let answer = match front.take() {
                Some(own) => own,
                None => match next_answer(&mut out) {
                    Some(answer) => {
                        self.below = self.below.saturating_sub(1);
                        answer
                    }
                    None => break,
                },
            };
            self.slots.pop_front();
            out.push(answer);
        }
        out.extend(below);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Protocol;
    use bytes::Bytes;
    use std::time::Instant;

    fn msg(text: &'static str) -> Message {
        Message::from_bytes(Bytes::from_static(text.as_bytes()), Protocol::Valkey, Instant::now())
    }

    fn texts(messages: &[Message]) -> Vec<String> {
        messages.iter().map(|m| String::from_utf8_lossy(m.raw().unwrap()).into_owned()).collect()
    }

    #[test]
    fn own_answers_wait_for_the_answers_before_them() {
        let mut order = InOrder::default();
        let request = msg("*1\r\n$4\r\nPING\r\n");
        order.passed_down(&request);
        order.answered_here(msg("own-1"));
        order.passed_down(&request);
        order.answered_here(msg("own-2"));
        // Nothing came up yet: own-1 must not overtake the first request's answer.
        assert!(order.merge(Vec::new()).is_empty());
        assert!(order.waits_below());
        assert_eq!(texts(&order.merge(vec![msg("below-1")])), ["below-1", "own-1"]);
        assert_eq!(texts(&order.merge(vec![msg("below-2"), msg("pushed")])), ["below-2", "own-2", "pushed"]);
        assert!(order.is_idle() && !order.waits_below());
    }

    #[test]
    fn answers_owed_from_earlier_batches_come_before_a_new_own_answer() {
        let mut order = InOrder::default();
        let request = msg("*1\r\n$4\r\nPING\r\n");
        // Batch 1 passes straight through, and its answer comes in a later run.
        order.passed_down(&request);
        assert!(order.merge(Vec::new()).is_empty());
        // Batch 2 is answered here: it must wait for batch 1's answer.
        order.answered_here(msg("own"));
        assert!(order.merge(Vec::new()).is_empty());
        assert_eq!(texts(&order.merge(vec![msg("below-1")])), ["below-1", "own"]);
        assert!(order.is_idle() && !order.waits_below());
    }

    #[test]
    fn pushed_messages_pass_where_they_came_and_answer_nothing() {
        let mut order = InOrder::default();
        let request = msg("*1\r\n$4\r\nPING\r\n");
        order.passed_down(&request);
        order.answered_here(msg("own"));
        let pushed = || {
            Message::pushed(Bytes::from_static(b">2\r\n$10\r\ninvalidate\r\n_\r\n"), Protocol::Valkey, Instant::now())
        };
        // A push that came before the answer it preceded upstream goes first, and does not
        // let the own answer overtake the answer still owed from below.
        assert_eq!(texts(&order.merge(vec![pushed()])), [">2\r\n$10\r\ninvalidate\r\n_\r\n"]);
        assert!(order.waits_below());
        let out = order.merge(vec![pushed(), msg("below")]);
        assert_eq!(texts(&out)[1..], ["below", "own"]);
        assert!(out[0].is_pushed() && order.is_idle() && !order.waits_below());
    }

    #[test]
    fn an_own_answer_with_nothing_before_it_goes_at_once() {
        let mut order = InOrder::default();
        order.answered_here(msg("own"));
        assert_eq!(texts(&order.merge(Vec::new())), ["own"]);
        assert!(order.is_idle());
    }
}
