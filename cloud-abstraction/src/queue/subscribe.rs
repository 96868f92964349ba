use super::{MessageQueue, ReceiveOptions, ReceivedMessage};
use crate::Result;
use futures::stream::{self, BoxStream, StreamExt};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// Options of [`subscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Messages fetched per receive call.
    pub batch_size: usize,
    /// Long-poll wait per receive call.
    pub wait: Duration,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self {
            batch_size: 10,
            wait: Duration::from_secs(1),
        }
    }
}

/// A received message with the handle to acknowledge it.
///
/// Dropping a delivery without calling [`ack`](Self::ack) or [`nack`](Self::nack) leaves it
/// leased until its ack deadline, after which it is delivered again.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The message.
    pub message: ReceivedMessage,
    queue: Arc<dyn MessageQueue>,
    topic: Arc<str>,
    group: Arc<str>,
}

impl Delivery {
    /// Wraps a received message with the queue it came from.
    pub fn new(
        message: ReceivedMessage,
        queue: Arc<dyn MessageQueue>,
        topic: impl Into<Arc<str>>,
        group: impl Into<Arc<str>>,
    ) -> Self {
        Self {
            message,
            queue,
            topic: topic.into(),
            group: group.into(),
        }
    }

    /// Acknowledges the message.
    pub async fn ack(&self) -> Result<()> {
        self.queue
            .ack(&self.topic, &self.group, &self.message.receipt)
            .await
    }

    /// Gives the message back, for redelivery after `delay`.
    pub async fn nack(&self, delay: Duration) -> Result<()> {
        self.queue
            .nack(&self.topic, &self.group, &self.message.receipt, delay)
            .await
    }

    /// Extends the lease to `extension` from now.
    pub async fn extend_deadline(&self, extension: Duration) -> Result<()> {
        self.queue
            .extend_deadline(&self.topic, &self.group, &self.message.receipt, extension)
            .await
    }
}

/// Subscribes `group` of `topic`: an endless stream of deliveries, fetched in batches with
/// long polling. A receive error is yielded as an item; the stream goes on after it.
pub fn subscribe(
    queue: Arc<dyn MessageQueue>,
    topic: &str,
    group: &str,
    options: SubscribeOptions,
) -> BoxStream<'static, Result<Delivery>> {
    let topic: Arc<str> = topic.into();
    let group: Arc<str> = group.into();
    let state = (queue, topic, group, VecDeque::<Delivery>::new());
    stream::unfold(state, move |(queue, topic, group, mut buffer)| async move {
        loop {
            if let Some(next) = buffer.pop_front() {
                return Some((Ok(next), (queue, topic, group, buffer)));
            }
            let received = queue
                .receive(
                    &topic,
                    &group,
                    ReceiveOptions {
                        max_messages: options.batch_size.max(1),
                        wait: options.wait,
                    },
                )
                .await;
            match received {
                Ok(messages) => buffer.extend(messages.into_iter().map(|m| {
                    Delivery::new(
                        m,
                        Arc::clone(&queue),
                        Arc::clone(&topic),
                        Arc::clone(&group),
                    )
                })),
                Err(e) => {
                    // Back off briefly so a down backend is not hammered in a tight loop.
                    tokio::time::sleep(options.wait.max(Duration::from_millis(100))).await;
                    return Some((Err(e), (queue, topic, group, buffer)));
                }
            }
        }
    })
    .boxed()
}
