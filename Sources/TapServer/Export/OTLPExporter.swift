import Logging
import NIOCore
import Synchronization
import TapTrace

#if canImport(Glibc)
    import Glibc
#endif

/// Sends finished spans to an OpenTelemetry backend (Jaeger, an OpenTelemetry Collector) over OTLP/HTTP.
///
/// Off the hot path by construction: `write` only appends to a bounded queue under a lock (a span that does not fit
/// is dropped and counted) and never waits for the network. `run()`, a task of its own, takes batches of up to
/// `batchSize` spans (as soon as that many are queued, else every `batchInterval`), encodes them and POSTs them to
/// `<URL>/v1/traces`. Answers 429/502/503/504 are retried with exponential backoff (honouring `Retry-After`); any
/// other failure, including a refused connection or a timeout, drops the batch and counts it: a dead or slow backend
/// costs spans, never forwarding latency. `finish()` starts the final flush, which ends within `shutdownTimeout`.
public final class OTLPExporter: SpanSink {
    /// How to export.
    public struct Configuration: Sendable {
        /// The collector's traces endpoint.
        public var endpoint: OTLPEndpoint
        /// Body encoding.
        public var encoding: OTLPEncoding = .protobuf
        /// Service name, version and host written as the OTLP resource.
        public var resource: OTLPResource
        /// Spans waiting to be sent, at most; more are dropped and counted.
        public var queueCapacity: Int = 8192
        /// Spans per request, at most.
        public var batchSize: Int = 512
        /// The longest a span waits in the queue before a partial batch is sent.
        public var batchInterval: Duration = .seconds(1)
        /// The longest one POST may take, connect included.
        public var requestTimeout: Duration = .seconds(10)
        /// The longest the final flush may take after `finish()`.
        public var shutdownTimeout: Duration = .seconds(5)
        /// Which answers are retried, how often, how long apart.
        public var retry = OTLPRetryPolicy()
        /// How often the counts are logged while they change.
        public var logInterval: Duration = .seconds(60)

        /// A configuration with the defaults above.
        public init(endpoint: OTLPEndpoint, encoding: OTLPEncoding = .protobuf, resource: OTLPResource = OTLPResource())
        {
            self.endpoint = endpoint
            self.encoding = encoding
            self.resource = resource
        }
    }

    /// What happened to the spans handed to the exporter. Every span ends in exactly one of `sent` or a drop
    /// counter (or is still queued or in flight).
    public struct Counts: Sendable, Equatable {
        /// Spans accepted by `write`.
        public var received = 0
        /// Spans the backend acknowledged (2xx).
        public var sent = 0
        /// Spans sent again after a retryable answer (once per retry).
        public var retried = 0
        /// Requests that were answered 2xx.
        public var requestsSucceeded = 0
        /// Requests that failed (any status other than 2xx, or no answer).
        public var requestsFailed = 0
        /// Spans dropped because the queue was full.
        public var droppedQueueFull = 0
        /// Spans dropped because the backend could not be reached, timed out, or kept answering 429/502/503/504.
        public var droppedUnavailable = 0
        /// Spans dropped because the backend refused them (another 4xx/5xx).
        public var droppedRejected = 0
        /// Spans still queued or in flight when the shutdown time limit ran out.
        public var droppedShutdown = 0

        /// All drops.
        public var dropped: Int { droppedQueueFull + droppedUnavailable + droppedRejected + droppedShutdown }
    }

    private enum Wake: Sendable { case batchFull, tick }

    private struct State {
        var queue = CircularBuffer<Span>(initialCapacity: 1024)
        var counts = Counts()
        var finishing = false
        var backendFailing = false
        var warnedQueueFull = false
    }

    private let configuration: Configuration
    private let client: OTLPHTTPClient
    private let logger: Logger
    private let state = Mutex(State())
    private let wake: AsyncStream<Wake>
    private let wakeContinuation: AsyncStream<Wake>.Continuation
    private let finished: AsyncStream<Void>
    private let finishedContinuation: AsyncStream<Void>.Continuation

    /// An exporter that does its network I/O on `group` (non-blocking; it shares the proxy's loops harmlessly).
    public init(configuration: Configuration, group: any EventLoopGroup, logger: Logger) {
        var configuration = configuration
        configuration.batchSize = max(1, configuration.batchSize)
        configuration.queueCapacity = max(configuration.batchSize, configuration.queueCapacity)
        self.configuration = configuration
        self.client = OTLPHTTPClient(endpoint: configuration.endpoint, group: group)
        self.logger = logger
        (wake, wakeContinuation) = AsyncStream.makeStream(of: Wake.self, bufferingPolicy: .bufferingNewest(1))
        (finished, finishedContinuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// Current counts, for logs, metrics and tests.
    public var currentCounts: Counts { state.withLock { $0.counts } }

    /// Spans waiting in the queue now.
    public var queuedSpans: Int { state.withLock { $0.queue.count } }

    // MARK: SpanSink

    /// Queues the span; never blocks on the network. A full queue (or a finished exporter) drops it, counted.
    public func write(_ span: Span) {
        let batchSize = configuration.batchSize
        let capacity = configuration.queueCapacity
        let (full, firstDrop, wakeUp) = state.withLock { s -> (Bool, Bool, Bool) in
            s.counts.received += 1
            if s.finishing {
                s.counts.droppedShutdown += 1
                return (true, false, false)
            }
            if s.queue.count >= capacity {
                s.counts.droppedQueueFull += 1
                let first = !s.warnedQueueFull
                s.warnedQueueFull = true
                return (true, first, false)
            }
            s.queue.append(span)
            return (false, false, s.queue.count % batchSize == 0)
        }
        if firstDrop {
            logger.warning(
                "OTLP export queue full: dropping spans (counted) until the backend catches up",
                metadata: ["otlp": "\(configuration.endpoint)", "queue_capacity": "\(capacity)"])
        }
        if !full, wakeUp { wakeContinuation.yield(.batchFull) }
    }

    /// Does nothing: batches leave by size and by `batchInterval`; `finish()` sends what is left.
    public func flush() {}

    // MARK: Running

    /// Exports until `finish()`, then sends what is queued within `shutdownTimeout`, drops the rest (counted) and logs
    /// the final counts.
    public func run() async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.exportLoop() }
            group.addTask {
                // The shutdown time limit: starts when finish() is called, cancels the export loop when it runs out.
                for await _ in self.finished { break }
                if Task.isCancelled { return }
                try? await Task.sleep(for: self.configuration.shutdownTimeout)
            }
            await group.next()
            group.cancelAll()
        }
        let left = state.withLock { s -> Int in
            let n = s.queue.count
            s.queue.removeAll()
            s.counts.droppedShutdown += n
            return n
        }
        if left > 0 {
            logger.warning(
                "OTLP export: shutdown time limit reached, spans left unsent (counted as dropped)",
                metadata: ["spans": "\(left)", "shutdown_timeout": "\(configuration.shutdownTimeout)"])
        }
        logCounts(final: true)
    }

    /// Stops taking spans and starts the final flush (`run()` returns when it is done or out of time).
    public func finish() {
        state.withLock { $0.finishing = true }
        finishedContinuation.yield(())
        finishedContinuation.finish()
        wakeContinuation.finish()
    }

    private func exportLoop() async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { [wakeContinuation, configuration] in
                while !Task.isCancelled {
                    try? await Task.sleep(for: configuration.batchInterval)
                    if case .terminated = wakeContinuation.yield(.tick) { return }
                }
            }
            let clock = ContinuousClock()
            var lastPartial = clock.now
            var lastLog = clock.now
            var lastLogged = Counts()
            for await _ in wake {
                let now = clock.now
                let partial = now - lastPartial >= configuration.batchInterval
                if partial { lastPartial = now }
                await sendQueued(includingPartial: partial)
                if clock.now - lastLog >= configuration.logInterval {
                    let counts = currentCounts
                    if counts != lastLogged {
                        logCounts(final: false)
                        lastLogged = counts
                    }
                    lastLog = clock.now
                }
                if Task.isCancelled { break }
            }
            group.cancelAll()
        }
        await sendQueued(includingPartial: true)
    }

    /// Sends full batches, and with `includingPartial` the last partial one too.
    private func sendQueued(includingPartial: Bool) async {
        let batchSize = configuration.batchSize
        while !Task.isCancelled {
            let batch = state.withLock { s -> [Span] in
                guard s.queue.count >= batchSize || (includingPartial && !s.queue.isEmpty) else { return [] }
                let n = min(batchSize, s.queue.count)
                var out: [Span] = []
                out.reserveCapacity(n)
                for _ in 0..<n { out.append(s.queue.removeFirst()) }
                return out
            }
            if batch.isEmpty { return }
            await export(batch)
        }
    }

    /// One batch: encode once, POST, retry on 429/502/503/504 as the policy allows, count the outcome.
    private func export(_ batch: [Span]) async {
        let body: [UInt8]
        switch configuration.encoding {
        case .protobuf: body = OTLPProtobufEncoder.encode(batch, resource: configuration.resource)
        case .json: body = OTLPJSONEncoder.encode(batch, resource: configuration.resource)
        }
        let n = batch.count
        var attempt = 1
        while true {
            if Task.isCancelled {
                state.withLock { $0.counts.droppedShutdown += n }
                return
            }
            let response: OTLPHTTPResponse
            do {
                response = try await client.post(
                    body: body, contentType: configuration.encoding.contentType, timeout: configuration.requestTimeout)
            } catch {
                if Task.isCancelled {
                    state.withLock { $0.counts.droppedShutdown += n }
                    return
                }
                failed(spans: n, unavailable: true, reason: "\(error)")
                return
            }
            if (200..<300).contains(response.status) {
                let recovered = state.withLock { s -> Bool in
                    s.counts.sent += n
                    s.counts.requestsSucceeded += 1
                    defer { s.backendFailing = false }
                    return s.backendFailing
                }
                if recovered {
                    logger.notice("OTLP export works again", metadata: ["otlp": "\(configuration.endpoint)"])
                }
                return
            }
            let retryable = OTLPRetryPolicy.isRetryable(status: response.status)
            if retryable,
                let delay = configuration.retry.delay(
                    afterAttempt: attempt, retryAfter: OTLPRetryPolicy.parseRetryAfter(response.retryAfter),
                    jitter: Double.random(in: 0...1))
            {
                state.withLock {
                    $0.counts.requestsFailed += 1
                    $0.counts.retried += n
                }
                logger.debug(
                    "OTLP export: retrying",
                    metadata: ["status": "\(response.status)", "attempt": "\(attempt)", "delay": "\(delay)"])
                do {
                    try await Task.sleep(for: delay)
                } catch {
                    state.withLock { $0.counts.droppedShutdown += n }
                    return
                }
                attempt += 1
                continue
            }
            let detail = response.bodyPrefix.isEmpty ? "" : ": \(response.bodyPrefix.prefix(300))"
            failed(spans: n, unavailable: retryable, reason: "HTTP \(response.status)\(detail)")
            return
        }
    }

    /// Counts a dropped batch; logs when the backend starts failing (once, not per batch).
    private func failed(spans n: Int, unavailable: Bool, reason: String) {
        let first = state.withLock { s -> Bool in
            s.counts.requestsFailed += 1
            if unavailable { s.counts.droppedUnavailable += n } else { s.counts.droppedRejected += n }
            defer { s.backendFailing = true }
            return !s.backendFailing
        }
        if first {
            logger.warning(
                "OTLP export failing: spans are dropped (counted) until the backend answers again; forwarding is not affected",
                metadata: ["otlp": "\(configuration.endpoint)", "reason": "\(reason)"])
        }
    }

    private func logCounts(final: Bool) {
        let c = currentCounts
        logger.info(
            final ? "OTLP export finished" : "OTLP export counts",
            metadata: [
                "otlp": "\(configuration.endpoint)", "spans_sent": "\(c.sent)", "spans_retried": "\(c.retried)",
                "spans_dropped": "\(c.dropped)", "dropped_queue_full": "\(c.droppedQueueFull)",
                "dropped_unavailable": "\(c.droppedUnavailable)", "dropped_rejected": "\(c.droppedRejected)",
                "dropped_shutdown": "\(c.droppedShutdown)", "requests_ok": "\(c.requestsSucceeded)",
                "requests_failed": "\(c.requestsFailed)",
            ])
    }

    // MARK: Wiring helpers

    /// Adds the export counters to the Prometheus endpoint.
    public func registerMetrics(in metrics: TapMetrics) {
        metrics.register(
            name: "gitaly_tap_spans_exported_total", help: "Spans the OTLP backend acknowledged.", type: "counter"
        ) {
            [("", Double(self.currentCounts.sent))]
        }
        metrics.register(
            name: "gitaly_tap_spans_export_retried_total", help: "Spans sent again after a 429/502/503/504 answer.",
            type: "counter"
        ) {
            [("", Double(self.currentCounts.retried))]
        }
        metrics.register(
            name: "gitaly_tap_spans_export_dropped_total", help: "Spans not exported, by reason.", type: "counter"
        ) {
            let c = self.currentCounts
            return [
                ("reason=\"queue_full\"", Double(c.droppedQueueFull)),
                ("reason=\"unavailable\"", Double(c.droppedUnavailable)),
                ("reason=\"rejected\"", Double(c.droppedRejected)),
                ("reason=\"shutdown\"", Double(c.droppedShutdown)),
            ]
        }
        metrics.register(name: "gitaly_tap_export_queue_spans", help: "Spans waiting to be exported.") {
            [("", Double(self.queuedSpans))]
        }
    }

    /// This machine's host name, for `host.name`.
    public static func localHostName() -> String? {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return nil }
        let name = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return name.isEmpty ? nil : name
    }
}

extension OTLPExporter {
    /// Runs `pipeline` and, beside it, `exporter`; when the pipeline has finished (and handed over its last spans), the
    /// exporter's final flush runs within its shutdown time limit.
    public static func runPipeline(_ pipeline: SpanPipeline, exporter: OTLPExporter?) async {
        guard let exporter else {
            await pipeline.run()
            return
        }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await exporter.run() }
            await pipeline.run()
            exporter.finish()
            await group.waitForAll()
        }
    }
}
