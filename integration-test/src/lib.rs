//! Support for the privileged tests.
