//! Receipts that carry the handle that received them.
//!
//! A broker's delivery handle is often valid only on the connection that received it (an AMQP
//! delivery tag is a number per channel; a lease kept by the client lives in one process). Used
//! on another connection it would settle some *other* delivery, or nothing, silently. So a
//! backend whose handles are not portable wraps the broker's handle as
//! `"<handle id>~<broker handle>"`, where the handle id is random per queue handle, and
//! [`Receipts::open`] refuses a receipt of another handle with `Unsupported` (the kit's
//! `receipt_from_another_handle` case checks it) and a malformed one with `InvalidArgument`.
//! Backends with portable receipts (the broker's handle works from any connection) use
//! [`Receipts::portable`], which checks only the form.

use cloud_abstraction::{Error, Result};

/// Longest broker handle accepted inside a receipt (bounds what a bogus receipt can cost).
pub(crate) const MAX_RECEIPT_LEN: usize = 1024;

/// Makes and opens the receipts of one queue handle.
#[derive(Debug, Clone)]
pub(crate) struct Receipts {
    backend: &'static str,
    /// `None`: receipts are portable, no handle id.
    handle: Option<String>,
}

impl Receipts {
    /// Receipts valid only on this handle (a fresh random id).
    pub(crate) fn per_handle(backend: &'static str) -> Self {
        Self {
            backend,
            handle: Some(format!("{:016x}", rand::random::<u64>())),
        }
    }

    /// Receipts valid on every handle: the broker's handle as it is.
    pub(crate) fn portable(backend: &'static str) -> Self {
        Self {
            backend,
            handle: None,
        }
    }

    /// The receipt of a delivery whose broker handle is `inner`.
    pub(crate) fn make(&self, inner: &str) -> String {
        match &self.handle {
            Some(handle) => format!("{handle}~{inner}"),
            None => inner.to_string(),
        }
    }

    /// The broker handle inside `receipt`: `InvalidArgument` when malformed (empty, too long,
    /// no handle id), `Unsupported` when it belongs to another handle.
    pub(crate) fn open<'a>(&self, receipt: &'a str) -> Result<&'a str> {
        if receipt.is_empty() || receipt.len() > MAX_RECEIPT_LEN {
            return Err(Error::invalid(self.backend, "malformed receipt"));
        }
        let Some(handle) = &self.handle else {
            return Ok(receipt);
        };
        let (owner, inner) = receipt
            .split_once('~')
            .filter(|(owner, inner)| owner.len() == 16 && !inner.is_empty())
            .ok_or_else(|| Error::invalid(self.backend, "malformed receipt"))?;
        if owner != handle {
            return Err(Error::unsupported(
                self.backend,
                "a receipt from another queue handle (this backend's receipts are valid only \
                 on the handle that received the message)",
            ));
        }
        Ok(inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloud_abstraction::ErrorKind;

    #[test]
    fn a_receipt_opens_only_on_its_handle() {
        let (a, b) = (Receipts::per_handle("t"), Receipts::per_handle("t"));
        let receipt = a.make("42");
        assert_eq!(a.open(&receipt).unwrap(), "42");
        assert_eq!(b.open(&receipt).unwrap_err().kind(), ErrorKind::Unsupported);
        for bad in ["", "42", "~42", "0123456789abcdef~", &"x".repeat(2000)] {
            assert_eq!(
                a.open(bad).unwrap_err().kind(),
                ErrorKind::InvalidArgument,
                "{bad:?}"
            );
        }
        let portable = Receipts::portable("t");
        assert_eq!(portable.open(&portable.make("x.y")).unwrap(), "x.y");
        assert_eq!(
            portable.open("").unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    }
}
