//! Placeholder: being written (WAO scores and numgen layout).
