//! End-to-end tests of keyraft live in `tests/tests/`.
