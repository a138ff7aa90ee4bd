//! Flows: one function per CLI verb, tying config, plan, exec and state together.
