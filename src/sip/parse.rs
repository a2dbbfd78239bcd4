//! The RFC 3261 §25 grammar, with nom: start lines, header splitting
//! (folding, compact forms), and the eager checks of the headers the core
//! relies on.
