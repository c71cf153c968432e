import Logging
import NIOCore
import NIOPosix
import TapTrace
import TapWire

#if canImport(Glibc)
import Glibc
#endif

/// Everything `gitaly-tap proxy` needs to run.
public struct ProxyRunOptions: Sendable {
    public var proxy: ProxyConfiguration
    /// Span log path, `-` for standard output, nil for none.
    public var spansPath: String?
    /// How long open connections may finish after SIGTERM/SIGINT.
    public var drainTimeout: Duration = .seconds(30)
    /// Event-loop threads; by default half the cores (at least one).
    ///
    /// The tap shares its host with Gitaly and its git processes, and spans (and a recording) are made on threads
    /// of their own. On the benchmark's 2 cores one event loop used 10–17 % less CPU per unary call than two, with
    /// equal calls per second in most runs; two reached more at 64 streams over TCP in some (BENCHMARKS.md).
    public var threads: Int = ProxyRunOptions.defaultThreads

    public static var defaultThreads: Int { max(1, System.coreCount / 2) }
    /// Where to serve `/metrics` and `/health`, if anywhere.
    public var metricsAddress: TapAddress?
    /// `--record`: where and how to record the session.
    public var recording: RecordingOptions?
    /// OTLP/HTTP export (`--otlp`), if any.
    public var otlp: OTLPExporter.Configuration?
    /// Trace2 sources (`--trace2-socket`, `--trace2-dir`); none by default.
    public var trace2 = Trace2Options()

    public init(proxy: ProxyConfiguration, spansPath: String?) {
        self.proxy = proxy
        self.spansPath = spansPath
    }
}

/// Runs the proxy until a termination signal, then drains and flushes.
public enum ProxyRuntime {
    /// Runs until SIGINT/SIGTERM (graceful; a second signal exits at once).
    public static func run(_ options: ProxyRunOptions, logger: Logger) async throws {
        var sinks: [any SpanSink] = []
        if let path = options.spansPath {
            do {
                sinks.append(try SpanLogWriter(path: path))
            } catch {
                throw ProxyStartError(description: error.description)
            }
        }
        let metrics = options.metricsAddress.map { _ in TapMetrics() }
        let collector = options.trace2.isEnabled ? Trace2Collector(configuration: options.trace2.collector, logger: logger) : nil
        var configuration = options.proxy
        let recorder = try options.recording.map { recording in
            configuration.limits.recordEvents = true
            configuration.limits.messageCapture = recording.limits.maxMessageBytes
            return try SessionRecorder(
                options: recording, listen: configuration.listen.description,
                upstream: configuration.upstream.description, logger: logger)
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, options.threads))
        let exporter = options.otlp.map { OTLPExporter(configuration: $0, group: group, logger: logger) }
        if let exporter { sinks.append(exporter) }
        let pipeline = SpanPipeline(sinks: sinks, metrics: metrics, observer: collector, logger: logger)
        let proxy = TapProxy(
            configuration: configuration, pipeline: pipeline, group: group, logger: logger, recorder: recorder)
        let signals = SignalStream.termination()
        var metricsServer: MetricsServer?
        var trace2: Trace2Runtime?
        do {
            if let collector {
                do {
                    trace2 = try await Trace2Runtime.start(options.trace2, collector: collector, group: group, logger: logger)
                } catch {
                    throw ProxyStartError(description: error.description)
                }
            }
            try await proxy.start()
            if let metrics, let address = options.metricsAddress {
                Self.registerGauges(metrics, proxy: proxy, pipeline: pipeline)
                exporter?.registerMetrics(in: metrics)
                trace2?.registerMetrics(metrics)
                metricsServer = try await MetricsServer(
                    address: address, metrics: metrics, group: group, logger: logger, healthy: { proxy.isListening })
            }
        } catch {
            await proxy.stop(drain: .zero)
            await trace2?.stop()
            await recorder?.finish()
            try? await group.shutdownGracefully()
            throw error
        }
        await withTaskGroup(of: Void.self) { tasks in
            tasks.addTask { await OTLPExporter.runPipeline(pipeline, exporter: exporter) }
            var iterator = signals.makeAsyncIterator()
            if let sig = await iterator.next() {
                logger.info(
                    "signal received: draining connections (send it again to exit at once)",
                    metadata: ["signal": "\(sig)", "drain_timeout": "\(options.drainTimeout)"])
                tasks.addTask {
                    var again = iterator
                    if await again.next() != nil {
                        logger.warning("second signal: exiting now")
                        exit(1)
                    }
                }
            }
            await proxy.stop(drain: options.drainTimeout)
            await trace2?.stop()
            await recorder?.finish()
            pipeline.finish()
            await metricsServer?.close()
            await tasks.next()
            tasks.cancelAll()
        }
        try? await group.shutdownGracefully()
    }

    /// Values read at scrape time.
    static func registerGauges(_ metrics: TapMetrics, proxy: TapProxy, pipeline: SpanPipeline) {
        metrics.register(name: "gitaly_tap_connections_open", help: "Client connections open now, by kind.") {
            proxy.openConnectionsByKind.sorted { $0.key < $1.key }.map { ("kind=\"\($0.key)\"", Double($0.value)) }
        }
        metrics.register(name: "gitaly_tap_spans_total", help: "Spans built from observed calls and connections.", type: "counter") {
            [("", Double(pipeline.currentCounts.spans))]
        }
        metrics.register(
            name: "gitaly_tap_spans_dropped_total", help: "Observations dropped because the span queue was full.", type: "counter"
        ) {
            [("", Double(pipeline.currentCounts.dropped))]
        }
    }
}
