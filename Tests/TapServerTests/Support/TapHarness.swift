import Foundation
import Logging
import NIOCore
import NIOPosix
import TapServer
import TapTrace
import Testing

/// An in-process tap with an in-memory span sink, for integration tests.
struct TapHarness: Sendable {
    let proxy: TapProxy
    let sink: CollectingSpanSink
    let pipeline: SpanPipeline
    let listen: TapAddress
    /// The bound address in Gitaly form (resolves port 0).
    let address: String

    /// Runs `body` with a tap listening on `listen` in front of `upstream`, then drains it; `capacity` bounds the
    /// span pipeline's queue.
    static func with<T: Sendable>(
        listen: TapAddress, upstream: TapAddress, limits: GRPCCallAssemblerLimits = .init(),
        metrics: TapMetrics? = nil, tls: TLSSettings = TLSSettings(), logger: Logger? = nil, capacity: Int = 65_536,
        _ body: (TapHarness) async throws -> T
    ) async throws -> T {
        let logger = logger ?? {
            var logger = Logger(label: "tap-test")
            logger.logLevel = .warning
            return logger
        }()
        let sink = CollectingSpanSink()
        let pipeline = SpanPipeline(sinks: [sink], capacity: capacity, metrics: metrics, logger: logger)
        var configuration = ProxyConfiguration(listen: listen, upstream: upstream, limits: limits.value)
        configuration.tls = tls
        let proxy = TapProxy(
            configuration: configuration,
            pipeline: pipeline, group: MultiThreadedEventLoopGroup.singleton, logger: logger)
        let bound = try await proxy.start()
        let address: String
        switch listen {
        case .unix: address = listen.description
        case .tcp(let host, _): address = "tcp://\(host):\(bound.port!)"
        case .tls(let host, _): address = "tls://\(host):\(bound.port!)"
        }
        let harness = TapHarness(proxy: proxy, sink: sink, pipeline: pipeline, listen: listen, address: address)
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await pipeline.run(flushInterval: .milliseconds(50)) }
            do {
                let result = try await body(harness)
                await proxy.stop(drain: .seconds(5))
                pipeline.finish()
                try await group.waitForAll()
                return result
            } catch {
                await proxy.stop(drain: .seconds(1))
                pipeline.finish()
                try await group.waitForAll()
                throw error
            }
        }
    }

    /// Waits until `predicate` holds for the collected spans (or fails after `timeout`).
    @discardableResult
    func waitForSpans(
        timeout: Duration = .seconds(15), _ what: String = "spans", _ predicate: ([Span]) -> Bool
    ) async throws -> [Span] {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            let spans = sink.collected
            if predicate(spans) { return spans }
            try await Task.sleep(for: .milliseconds(25))
        }
        throw PeerError("timed out waiting for \(what); have \(sink.collected.map(\.name))")
    }

    /// Spans whose `gitlab.correlation_id` is `id`.
    func spans(correlationID id: String) -> [Span] {
        sink.collected.filter { $0.attributes["gitlab.correlation_id"] == .string(id) }
    }
}

/// Sendable wrapper of the assembler limits (so tests can tweak them).
struct GRPCCallAssemblerLimits: Sendable {
    var value = TapWire.GRPCCallAssembler.Limits()
}

import TapWire

extension AttributeValue {
    var intValue: Int64? {
        if case .int(let v) = self { return v }
        return nil
    }
    var stringValue: String? {
        if case .string(let v) = self { return v }
        return nil
    }
}
