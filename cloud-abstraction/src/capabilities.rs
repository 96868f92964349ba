//! What a value made of several backends (a failover, a replica set) can promise: only what every member supports.
//!
//! A failover or replicated store may serve any call from any member, so a capability counts
//! only if all members have it; limits take the strictest member's value; `simulated` is true
//! if any member only simulates.

use crate::compute::ComputeCapabilities;
use crate::database::DatabaseCapabilities;
use crate::queue::QueueCapabilities;
use crate::storage::StorageCapabilities;

/// The smaller of two optional limits (`None` is unlimited).
fn min_limit(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Capabilities that a value of several members shares.
pub trait CommonCapabilities: Sized + Clone {
    /// What both `self` and `other` support.
    fn common(&self, other: &Self) -> Self;

    /// What every member supports; `None` for no members.
    fn common_of(all: impl IntoIterator<Item = Self>) -> Option<Self> {
        all.into_iter().reduce(|a, b| a.common(&b))
    }
}

impl CommonCapabilities for StorageCapabilities {
    fn common(&self, other: &Self) -> Self {
        // Destructured so that a new capability cannot be forgotten here.
        let StorageCapabilities {
            conditional_put,
            conditional_get,
            ranges,
            multipart,
            multipart_min_part_size,
            metadata,
            presign,
            max_put_size,
            metadata_names,
        } = self.clone();
        StorageCapabilities {
            conditional_put: conditional_put && other.conditional_put,
            conditional_get: conditional_get && other.conditional_get,
            ranges: ranges && other.ranges,
            multipart: multipart && other.multipart,
            multipart_min_part_size: multipart_min_part_size.max(other.multipart_min_part_size),
            metadata: metadata && other.metadata,
            // A presigned URL names one member: useless once that member fails over.
            presign: presign && other.presign,
            max_put_size: min_limit(max_put_size, other.max_put_size),
            metadata_names: metadata_names.common(other.metadata_names),
        }
    }
}

impl CommonCapabilities for DatabaseCapabilities {
    fn common(&self, other: &Self) -> Self {
        let DatabaseCapabilities {
            transactions,
            ttl,
            query,
            query_range,
            query_in_prefix,
            query_order,
            max_document_size,
        } = self.clone();
        DatabaseCapabilities {
            transactions: transactions && other.transactions,
            ttl: ttl && other.ttl,
            query: query && other.query,
            query_range: query_range && other.query_range,
            query_in_prefix: query_in_prefix && other.query_in_prefix,
            query_order: query_order && other.query_order,
            max_document_size: min_limit(max_document_size, other.max_document_size),
        }
    }
}

impl CommonCapabilities for QueueCapabilities {
    fn common(&self, other: &Self) -> Self {
        let QueueCapabilities {
            nack_delay,
            delayed_delivery,
            ordering_keys,
            dead_letter,
            deduplication,
            extend_deadline,
            nack,
            lease_expiry,
            attempt_count,
            portable_receipts,
            durable,
            max_message_size,
        } = self.clone();
        QueueCapabilities {
            nack_delay: nack_delay && other.nack_delay,
            delayed_delivery: delayed_delivery && other.delayed_delivery,
            ordering_keys: ordering_keys && other.ordering_keys,
            dead_letter: dead_letter && other.dead_letter,
            deduplication: deduplication && other.deduplication,
            extend_deadline: extend_deadline && other.extend_deadline,
            nack: nack && other.nack,
            lease_expiry: lease_expiry && other.lease_expiry,
            attempt_count: attempt_count && other.attempt_count,
            portable_receipts: portable_receipts && other.portable_receipts,
            durable: durable && other.durable,
            max_message_size: min_limit(max_message_size, other.max_message_size),
        }
    }
}

impl CommonCapabilities for ComputeCapabilities {
    fn common(&self, other: &Self) -> Self {
        let ComputeCapabilities {
            images,
            commands,
            logs,
            scale,
            resource_limits,
            ports,
            simulated,
        } = self.clone();
        ComputeCapabilities {
            images: images && other.images,
            commands: commands && other.commands,
            logs: logs && other.logs,
            scale: scale && other.scale,
            resource_limits: resource_limits && other.resource_limits,
            ports: ports && other.ports,
            simulated: simulated || other.simulated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_take_the_strictest_member() {
        assert_eq!(min_limit(None, None), None);
        assert_eq!(min_limit(Some(5), None), Some(5));
        assert_eq!(min_limit(None, Some(7)), Some(7));
        assert_eq!(min_limit(Some(5), Some(7)), Some(5));
    }

    #[test]
    fn a_capability_counts_only_if_every_member_has_it() {
        let full = QueueCapabilities {
            max_message_size: Some(1 << 20),
            ..QueueCapabilities::full()
        };
        let weak = QueueCapabilities {
            dead_letter: false,
            durable: false,
            max_message_size: Some(1024),
            ..full.clone()
        };
        let both = QueueCapabilities::common_of([full.clone(), weak]).unwrap();
        assert!(both.nack_delay && !both.dead_letter && !both.durable);
        assert_eq!(both.max_message_size, Some(1024));
        assert_eq!(QueueCapabilities::common_of(Vec::new()), None);
    }
}
