//! Runnable examples of dtf; see `examples/` and the README's index. This library target
//! is empty: it exists so the examples have a package to belong to.

#![forbid(unsafe_code)]
