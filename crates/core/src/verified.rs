//! `Verified<T>`: proof that a value passed verification, carried in the type.

use std::ops::Deref;

/// A value that passed the checks of this crate's `verify_*` functions.
///
/// Only this crate can construct one, so code that takes a `Verified<Lookup>` cannot be
/// handed an unchecked answer by mistake. There is deliberately no `From` or `new` in the
/// public API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified<T>(T);

impl<T> Verified<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(value)
    }

    /// The verified value.
    pub fn get(&self) -> &T {
        &self.0
    }

    /// Gives up the witness and returns the value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> Deref for Verified<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}
