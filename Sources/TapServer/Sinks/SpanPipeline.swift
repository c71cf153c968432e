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
        case call(FinishedCall)
        case connection(ConnectionSummary)
    }

    /// A finished call on its way to the span thread. Boxed: the queue and the batch move one reference per call,
    /// not the dozen a call record and its connection hold (each of which would be retained and released again).
    final class FinishedCall: Sendable {
        let record: GRPCCallRecord
        let connection: ConnectionInfo

        init(_ record: GRPCCallRecord, _ connection: ConnectionInfo) {
            self.record = record
            self.connection = connection
        }
    }

    /// Counters for logs and metrics.
    public struct Counts: Sendable, Equatable {
        public var calls = 0
        public var connections = 0
        public var spans = 0
        public var dropped = 0
        public var decodingStopped = 0
    }

    /// Items handed over by the event loops, taken in batches by `run()`.
    private struct Queue {
        var items: [Item] = []
        var finished = false
        var flushRequested = false
    }

    private let queue = Mutex(Queue())
    private let capacity: Int
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
        self.capacity = capacity
        self.sinks = sinks + (metrics.map { [$0] } ?? [])
        self.builder = builder
        self.metrics = metrics
        self.logger = logger
    }

    /// Current counters.
    public var currentCounts: Counts { counts.withLock { $0 } }

    func submit(call: GRPCCallRecord, connection: ConnectionInfo) {
        enqueue(.call(FinishedCall(call, connection)))
    }

    func submit(connection: ConnectionSummary) {
        enqueue(.connection(connection))
    }

    func decodingStopped(reason: String) {
        metrics?.decodingStopped(reason: reason)
        counts.withLock { $0.decodingStopped += 1 }
    }

    /// Asks the sinks to write out what they buffer.
    public func requestFlush() {
        queue.withLock { $0.flushRequested = true }
    }

    /// Ends the pipeline: `run()` processes what is queued, flushes the sinks and returns.
    public func finish() {
        queue.withLock { $0.finished = true }
    }

    /// Processes items until `finish()` (or cancellation); flushes the sinks every `flushInterval` and at the end.
    ///
    /// Items are taken in batches: the consumer polls every `batchInterval` while items arrive (backing off up to
    /// 25 ms while idle) instead of being woken per item, so an event loop's `submit` is an append under
    /// an uncontended lock, never a thread wake-up.
    public func run(flushInterval: Duration = .milliseconds(200), batchInterval: Duration = .milliseconds(5)) async {
        var generator = SplitMix64(seed: UInt64.random(in: .min ... .max))
        var names = MethodNames()
        var spare: [Item] = []
        var lastFlush = ContinuousClock.now
        var pause = batchInterval
        while true {
            var (items, finished, flushRequested) = queue.withLock { q -> ([Item], Bool, Bool) in
                var taken = spare
                swap(&taken, &q.items)
                let flush = q.flushRequested
                q.flushRequested = false
                return (taken, q.finished, flush)
            }
            let processed = items.count
            var tally = Counts()
            for item in items { process(item, using: &generator, names: &names, tally: &tally) }
            items.removeAll(keepingCapacity: true)
            spare = items
            let now = ContinuousClock.now
            if flushRequested || now - lastFlush >= flushInterval {
                if let observer { write(observer.drain(), tally: &tally) }
                for sink in sinks { sink.flush() }
                lastFlush = now
            }
            add(tally)
            if finished || Task.isCancelled { break }
            pause = processed == 0 ? min(pause * 2, min(flushInterval, .milliseconds(25))) : batchInterval
            do {
                try await Task.sleep(for: pause)
            } catch {
                finish()
            }
        }
        let rest = queue.withLock { q -> [Item] in
            q.finished = true
            defer { q.items = [] }
            return q.items
        }
        var tally = Counts()
        for item in rest { process(item, using: &generator, names: &names, tally: &tally) }
        if let observer { write(observer.finish(), tally: &tally) }
        add(tally)
        for sink in sinks { sink.flush() }
        let c = currentCounts
        logger.info(
            "span pipeline finished",
            metadata: ["calls": "\(c.calls)", "spans": "\(c.spans)", "dropped": "\(c.dropped)"])
    }

    private func enqueue(_ item: Item) {
        let dropped = queue.withLock { q -> Bool in
            guard !q.finished else { return false }
            guard q.items.count < capacity else { return true }
            q.items.append(item)
            return false
        }
        if dropped {
            let first = counts.withLock { c -> Bool in
                c.dropped += 1
                return c.dropped == 1
            }
            if first { logger.warning("span queue full: dropping spans (counted) to keep forwarding fast") }
        }
    }

    /// Adds a batch's counts to the shared ones: one lock per batch, not two per call.
    private func add(_ tally: Counts) {
        guard tally.calls > 0 || tally.connections > 0 || tally.spans > 0 else { return }
        counts.withLock {
            $0.calls += tally.calls
            $0.connections += tally.connections
            $0.spans += tally.spans
        }
    }

    private func process(
        _ item: Item, using generator: inout SplitMix64, names: inout MethodNames, tally: inout Counts
    ) {
        switch item {
        case .call(let call):
            let span = builder.span(for: call.record, connection: call.connection, using: &generator, names: &names)
            tally.calls += 1
            tally.spans += 1
            for sink in sinks { sink.write(span) }
            if let observer { write(observer.observe(span), tally: &tally) }
        case .connection(let summary):
            tally.connections += 1
            metrics?.connectionClosed(summary)
            guard let span = builder.connectionSpan(for: summary) else { return }
            tally.spans += 1
            for sink in sinks { sink.write(span) }
        }
    }

    /// Spans that an observer added (git processes from Trace2).
    private func write(_ spans: [Span], tally: inout Counts) {
        guard !spans.isEmpty else { return }
        tally.spans += spans.count
        for span in spans {
            for sink in sinks { sink.write(span) }
        }
    }
}

/// Trace and span ids for call spans: SplitMix64 seeded once from the system's random source. Ids must be unique,
/// not secret; a `getrandom` call per span cost more than building the span.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
