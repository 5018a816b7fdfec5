//! Device-level tests on mock guest memory and queues.
