import Logging
import Synchronization
import TapTrace
import TapWire

/// Carries what the connections observed off the event loops, turns it into spans and hands them to the sinks.
///
/// `submit` never blocks: the queue is bounded and an item that does not fit is dropped and counted. Spans are built
/// and encoded in `run()`, a task of its own, so the forwarding path pays only for an enqueue.
public final class SpanPipeline: Sendable {
    enum Item: Sendable {
        case call(GRPCCallRecord, ConnectionInfo)
        case connection(ConnectionSummary)
        case flush
    }

    /// Counters for logs and metrics.
    public struct Counts: Sendable, Equatable {
        public var calls = 0
        public var connections = 0
        public var spans = 0
        public var dropped = 0
        public var decodingStopped = 0
    }

    private let stream: AsyncStream<Item>
    private let continuation: AsyncStream<Item>.Continuation
    private let counts = Mutex(Counts())
    private let sinks: [any SpanSink]
    private let builder: RPCSpanBuilder
    private let logger: Logger
    private let metrics: TapMetrics?
    private let observer: (any SpanObserver)?

    /// Creates a pipeline holding at most `capacity` unprocessed items; `metrics` also hears of every connection.
    public init(
        sinks: [any SpanSink], builder: RPCSpanBuilder = RPCSpanBuilder(), capacity: Int = 65_536,
        metrics: TapMetrics? = nil, observer: (any SpanObserver)? = nil, logger: Logger
    ) {
        self.observer = observer
        (stream, continuation) = AsyncStream.makeStream(of: Item.self, bufferingPolicy: .bufferingOldest(capacity))
        self.sinks = sinks + (metrics.map { [$0] } ?? [])
        self.builder = builder
        self.metrics = metrics
        self.logger = logger
    }

    /// Current counters.
    public var currentCounts: Counts { counts.withLock { $0 } }

    func submit(call: GRPCCallRecord, connection: ConnectionInfo) {
        enqueue(.call(call, connection))
    }

    func submit(connection: ConnectionSummary) {
        enqueue(.connection(connection))
    }

    func decodingStopped(reason: String) {
        counts.withLock { $0.decodingStopped += 1 }
    }

    /// Asks the sinks to write out what they buffer.
    public func requestFlush() {
        continuation.yield(.flush)
    }

    /// Ends the pipeline: `run()` processes what is queued, flushes the sinks and returns.
    public func finish() {
        continuation.finish()
    }

    /// Processes items until `finish()`; flushes the sinks every `flushInterval` and at the end.
    public func run(flushInterval: Duration = .milliseconds(200)) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { [continuation] in
                while !Task.isCancelled {
                    try? await Task.sleep(for: flushInterval)
                    if case .terminated = continuation.yield(.flush) { return }
                }
            }
            for await item in stream {
                process(item)
            }
            group.cancelAll()
        }
        if let observer { write(observer.finish()) }
        for sink in sinks { sink.flush() }
        let c = currentCounts
        logger.info(
            "span pipeline finished",
            metadata: ["calls": "\(c.calls)", "spans": "\(c.spans)", "dropped": "\(c.dropped)"])
    }

    private func enqueue(_ item: Item) {
        if case .dropped = continuation.yield(item) {
            let first = counts.withLock { c -> Bool in
                c.dropped += 1
                return c.dropped == 1
            }
            if first { logger.warning("span queue full: dropping spans (counted) to keep forwarding fast") }
        }
    }

    private func process(_ item: Item) {
        switch item {
        case .call(let record, let info):
            let span = builder.span(for: record, connection: info)
            counts.withLock {
                $0.calls += 1
                $0.spans += 1
            }
            for sink in sinks { sink.write(span) }
            if let observer { write(observer.observe(span)) }
        case .connection(let summary):
            counts.withLock { $0.connections += 1 }
            metrics?.connectionClosed(summary)
            guard let span = builder.connectionSpan(for: summary) else { return }
            counts.withLock { $0.spans += 1 }
            for sink in sinks { sink.write(span) }
        case .flush:
            if let observer { write(observer.drain()) }
            for sink in sinks { sink.flush() }
        }
    }

    /// Spans that an observer added (git processes from Trace2).
    private func write(_ spans: [Span]) {
        guard !spans.isEmpty else { return }
        counts.withLock { $0.spans += spans.count }
        for span in spans {
            for sink in sinks { sink.write(span) }
        }
    }
}
