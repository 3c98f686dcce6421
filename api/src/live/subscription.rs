//! One subscriber's end of the hub: a stream over its mailbox.

use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use futures_util::Stream;

use super::Inner;
use super::mailbox::{Event, Lagged, Mailbox};

/// One subscriber's stream of events. Dropping it (the client unsubscribed
/// or went away) removes its registration, and the channel's when it was
/// the last one.
pub struct Subscription {
    pub(super) hub: Weak<Inner>,
    pub(super) channel: String,
    pub(super) id: u64,
    pub(super) mailbox: Arc<Mailbox>,
    pub(super) end_after_final: bool,
    pub(super) done: bool,
}

impl Stream for Subscription {
    type Item = Result<Event, Lagged>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let next = match self.mailbox.pop() {
            Some(e) => Some(e),
            None => {
                self.mailbox.waker.register(cx.waker());
                self.mailbox.pop()
            }
        };
        match next {
            None => Poll::Pending,
            Some(Err(lagged)) => {
                self.done = true;
                Poll::Ready(Some(Err(lagged)))
            }
            Some(Ok(event)) => {
                let last = match &event {
                    Event::Generation(s) => s.status().is_final(),
                    Event::Asset(a) => super::mailbox::asset_key(a).0 == 2,
                    Event::Credits(_) => false,
                };
                if self.end_after_final && last {
                    self.done = true;
                }
                Poll::Ready(Some(Ok(event)))
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            hub.unregister(&self.channel, self.id);
        }
    }
}
