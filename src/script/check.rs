//! Static check of a route script (`serlua check`): unknown primitives,
//! wrong arity, calls outside their route kind, literal arguments a fixup
//! rejects, and references to routes that do not exist — each reported with
//! file:line before the proxy starts.
