//! What several server queues must emulate because their broker does not do it, written once.
//!
//! Each piece is a file, used by every backend that needs it:
//! - [`deliveries`]: what a handle remembers of the deliveries it received and settled, to
//!   refuse stale receipts where the broker settles a message by position alone (JetStream).
//! - [`receipt`]: receipts that name the handle that received them, so a receipt used on
//!   another handle is refused (`Unsupported`) where the broker's handle is per connection,
//!   and malformed ones are `InvalidArgument`.

#![allow(dead_code)] // which pieces are used depends on the enabled backends

pub(crate) mod deliveries;
pub(crate) mod receipt;
