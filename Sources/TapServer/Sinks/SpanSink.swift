import Synchronization
import TapTrace

/// Where finished spans go: the JSON-lines log, an OTLP exporter, a test collector.
///
/// Sinks are called from the span pipeline's task only, never from an event loop, so they may block briefly.
public protocol SpanSink: Sendable {
    /// Takes one finished span.
    func write(_ span: Span)
    /// Pushes buffered spans out; called periodically and before shutdown.
    func flush()
}

/// Keeps every span in memory; tests and `demo` read them back.
public final class CollectingSpanSink: SpanSink {
    private let spans = Mutex<[Span]>([])

    public init() {}

    public func write(_ span: Span) {
        spans.withLock { $0.append(span) }
    }

    public func flush() {}

    /// The spans written so far, in order.
    public var collected: [Span] {
        spans.withLock { $0 }
    }
}
