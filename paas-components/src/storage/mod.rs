//! storage backends.
