//! The tower bridge for [`MessageQueue`]: every queue is a [`Service`], and every such
//! service (with layers on it) is a queue again. See [`crate::storage::service`] for the
//! pattern. Subscriptions are built on `receive` (see [`super::subscribe`]), so they pass
//! through the layers too.

use super::{
    GroupOptions, Message, MessageQueue, QueueCapabilities, ReceiveOptions, ReceivedMessage,
};
use crate::service_util::{BoxError, call_service, unexpected_response};
use crate::{BackendInfo, Error, Result};
use async_trait::async_trait;
use futures::future::BoxFuture;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower_service::Service;

/// One [`MessageQueue`] call as a value.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // the fields are the trait methods' parameters
pub enum QueueRequest {
    CreateTopic {
        topic: String,
    },
    DeleteTopic {
        topic: String,
    },
    CreateGroup {
        topic: String,
        group: String,
        options: GroupOptions,
    },
    DeleteGroup {
        topic: String,
        group: String,
    },
    Publish {
        topic: String,
        message: Message,
    },
    PublishBatch {
        topic: String,
        messages: Vec<Message>,
    },
    Receive {
        topic: String,
        group: String,
        options: ReceiveOptions,
    },
    Ack {
        topic: String,
        group: String,
        receipt: String,
    },
    Nack {
        topic: String,
        group: String,
        receipt: String,
        delay: Duration,
    },
    ExtendDeadline {
        topic: String,
        group: String,
        receipt: String,
        extension: Duration,
    },
}

impl QueueRequest {
    /// The operation's name, for logs and metrics.
    pub fn operation(&self) -> &'static str {
        match self {
            Self::CreateTopic { .. } => "create_topic",
            Self::DeleteTopic { .. } => "delete_topic",
            Self::CreateGroup { .. } => "create_group",
            Self::DeleteGroup { .. } => "delete_group",
            Self::Publish { .. } => "publish",
            Self::PublishBatch { .. } => "publish_batch",
            Self::Receive { .. } => "receive",
            Self::Ack { .. } => "ack",
            Self::Nack { .. } => "nack",
            Self::ExtendDeadline { .. } => "extend_deadline",
        }
    }

    /// The topic the request is about.
    pub fn topic(&self) -> &str {
        match self {
            Self::CreateTopic { topic }
            | Self::DeleteTopic { topic }
            | Self::CreateGroup { topic, .. }
            | Self::DeleteGroup { topic, .. }
            | Self::Publish { topic, .. }
            | Self::PublishBatch { topic, .. }
            | Self::Receive { topic, .. }
            | Self::Ack { topic, .. }
            | Self::Nack { topic, .. }
            | Self::ExtendDeadline { topic, .. } => topic,
        }
    }
}

/// The result of a [`QueueRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum QueueResponse {
    Done,
    Published(String),
    PublishedBatch(Vec<String>),
    Received(Vec<ReceivedMessage>),
}

/// Any [`MessageQueue`] as a [`tower_service::Service`].
#[derive(Clone)]
pub struct MessageQueueService {
    queue: Arc<dyn MessageQueue>,
}

impl MessageQueueService {
    /// Wraps a queue.
    pub fn new(queue: Arc<dyn MessageQueue>) -> Self {
        Self { queue }
    }

    /// The wrapped queue.
    pub fn queue(&self) -> &Arc<dyn MessageQueue> {
        &self.queue
    }
}

impl fmt::Debug for MessageQueueService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("MessageQueueService")
            .field(&self.queue)
            .finish()
    }
}

impl Service<QueueRequest> for MessageQueueService {
    type Response = QueueResponse;
    type Error = Error;
    type Future = BoxFuture<'static, Result<QueueResponse>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: QueueRequest) -> Self::Future {
        let q = Arc::clone(&self.queue);
        Box::pin(async move {
            Ok(match request {
                QueueRequest::CreateTopic { topic } => {
                    q.create_topic(&topic).await?;
                    QueueResponse::Done
                }
                QueueRequest::DeleteTopic { topic } => {
                    q.delete_topic(&topic).await?;
                    QueueResponse::Done
                }
                QueueRequest::CreateGroup {
                    topic,
                    group,
                    options,
                } => {
                    q.create_group(&topic, &group, options).await?;
                    QueueResponse::Done
                }
                QueueRequest::DeleteGroup { topic, group } => {
                    q.delete_group(&topic, &group).await?;
                    QueueResponse::Done
                }
                QueueRequest::Publish { topic, message } => {
                    QueueResponse::Published(q.publish(&topic, message).await?)
                }
                QueueRequest::PublishBatch { topic, messages } => {
                    QueueResponse::PublishedBatch(q.publish_batch(&topic, messages).await?)
                }
                QueueRequest::Receive {
                    topic,
                    group,
                    options,
                } => QueueResponse::Received(q.receive(&topic, &group, options).await?),
                QueueRequest::Ack {
                    topic,
                    group,
                    receipt,
                } => {
                    q.ack(&topic, &group, &receipt).await?;
                    QueueResponse::Done
                }
                QueueRequest::Nack {
                    topic,
                    group,
                    receipt,
                    delay,
                } => {
                    q.nack(&topic, &group, &receipt, delay).await?;
                    QueueResponse::Done
                }
                QueueRequest::ExtendDeadline {
                    topic,
                    group,
                    receipt,
                    extension,
                } => {
                    q.extend_deadline(&topic, &group, &receipt, extension)
                        .await?;
                    QueueResponse::Done
                }
            })
        })
    }
}

/// Any `Service<QueueRequest>` as a [`MessageQueue`] again.
#[derive(Clone)]
pub struct ServiceMessageQueue<S> {
    service: S,
    info: BackendInfo,
    capabilities: QueueCapabilities,
}

impl<S> ServiceMessageQueue<S> {
    /// Wraps `service`, reporting `info` and `capabilities` as the queue's own.
    pub fn new(service: S, info: BackendInfo, capabilities: QueueCapabilities) -> Self {
        Self {
            service,
            info,
            capabilities,
        }
    }
}

impl<S> fmt::Debug for ServiceMessageQueue<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceMessageQueue")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl<S> ServiceMessageQueue<S>
where
    S: Service<QueueRequest, Response = QueueResponse> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    async fn done(&self, request: QueueRequest) -> Result<()> {
        let op = request.operation();
        match call_service(&self.service, &self.info.backend, request).await? {
            QueueResponse::Done => Ok(()),
            _ => Err(unexpected_response(&self.info.backend, op)),
        }
    }
}

#[async_trait]
impl<S> MessageQueue for ServiceMessageQueue<S>
where
    S: Service<QueueRequest, Response = QueueResponse> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    fn info(&self) -> BackendInfo {
        self.info.clone()
    }

    fn capabilities(&self) -> QueueCapabilities {
        self.capabilities.clone()
    }

    async fn create_topic(&self, topic: &str) -> Result<()> {
        self.done(QueueRequest::CreateTopic {
            topic: topic.into(),
        })
        .await
    }

    async fn delete_topic(&self, topic: &str) -> Result<()> {
        self.done(QueueRequest::DeleteTopic {
            topic: topic.into(),
        })
        .await
    }

    async fn create_group(&self, topic: &str, group: &str, options: GroupOptions) -> Result<()> {
        self.done(QueueRequest::CreateGroup {
            topic: topic.into(),
            group: group.into(),
            options,
        })
        .await
    }

    async fn delete_group(&self, topic: &str, group: &str) -> Result<()> {
        self.done(QueueRequest::DeleteGroup {
            topic: topic.into(),
            group: group.into(),
        })
        .await
    }

    async fn publish(&self, topic: &str, message: Message) -> Result<String> {
        let request = QueueRequest::Publish {
            topic: topic.into(),
            message,
        };
        match call_service(&self.service, &self.info.backend, request).await? {
            QueueResponse::Published(id) => Ok(id),
            _ => Err(unexpected_response(&self.info.backend, "publish")),
        }
    }

    async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<String>> {
        let request = QueueRequest::PublishBatch {
            topic: topic.into(),
            messages,
        };
        match call_service(&self.service, &self.info.backend, request).await? {
            QueueResponse::PublishedBatch(ids) => Ok(ids),
            _ => Err(unexpected_response(&self.info.backend, "publish_batch")),
        }
    }

    async fn receive(
        &self,
        topic: &str,
        group: &str,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        let request = QueueRequest::Receive {
            topic: topic.into(),
            group: group.into(),
            options,
        };
        match call_service(&self.service, &self.info.backend, request).await? {
            QueueResponse::Received(messages) => Ok(messages),
            _ => Err(unexpected_response(&self.info.backend, "receive")),
        }
    }

    async fn ack(&self, topic: &str, group: &str, receipt: &str) -> Result<()> {
        self.done(QueueRequest::Ack {
            topic: topic.into(),
            group: group.into(),
            receipt: receipt.into(),
        })
        .await
    }

    async fn nack(&self, topic: &str, group: &str, receipt: &str, delay: Duration) -> Result<()> {
        self.done(QueueRequest::Nack {
            topic: topic.into(),
            group: group.into(),
            receipt: receipt.into(),
            delay,
        })
        .await
    }

    async fn extend_deadline(
        &self,
        topic: &str,
        group: &str,
        receipt: &str,
        extension: Duration,
    ) -> Result<()> {
        self.done(QueueRequest::ExtendDeadline {
            topic: topic.into(),
            group: group.into(),
            receipt: receipt.into(),
            extension,
        })
        .await
    }
}
