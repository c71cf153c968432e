import TapTrace

/// Something that watches the RPC spans going to the sinks and adds spans of its own (the Trace2 correlator).
///
/// Called from the span pipeline's task only, like the sinks, so the spans it returns are written in order with
/// the rest. It must not block for long.
public protocol SpanObserver: Sendable {
    /// An RPC span was written; returns spans to write now because of it.
    func observe(_ span: Span) -> [Span]
    /// Called on every flush tick: spans that became ready in the meantime.
    func drain() -> [Span]
    /// The pipeline is ending: everything still held, decided as well as it can be.
    func finish() -> [Span]
}
