import Foundation
import Logging
import NIOPosix
import Synchronization
import TapServer
import TapTrace
import Testing

/// The test OTLP/HTTP receiver (Tests/Peers/otlp_receiver.py): decodes with the official opentelemetry-proto.
struct OTLPReceiver {
    let process: PeerProcess
    let port: Int
    var url: String { "http://127.0.0.1:\(port)" }

    static func start(in dir: TempDir, port: Int = 0, name: String = "otlp") async throws -> OTLPReceiver {
        try Peers.requirePython()
        let process = try PeerProcess(
            Peers.python,
            [
                Peers.script("otlp_receiver.py"), "--listen", "tcp://127.0.0.1:\(port)", "--out",
                dir.file("received.jsonl"),
            ],
            dir: dir, name: name)
        let ready = try await process.waitReady()
        let json = try JSONSerialization.jsonObject(with: Data(ready.dropFirst("READY ".count).utf8)) as! [String: Any]
        let url = try #require(json["url"] as? String)
        let bound = try #require(Int(url.split(separator: ":").last!))
        return OTLPReceiver(process: process, port: bound)
    }

    func control(_ path: String) throws -> Any {
        let (status, body) = try MetricsTests.get(port, path)
        guard status.contains(" 200 ") else { throw PeerError("receiver \(path): \(status) \(body)") }
        return try JSONSerialization.jsonObject(with: Data(body.utf8))
    }

    func stats() throws -> [String: Any] { try control("/control/stats") as! [String: Any] }
    func spans() throws -> [[String: Any]] { try control("/control/spans") as! [[String: Any]] }

    /// Decoded spans whose `gitlab.correlation_id` is `id`.
    func spans(correlationID id: String) throws -> [[String: Any]] {
        try spans().filter { OTLPExportTests.attribute($0, "gitlab.correlation_id") as? String == id }
    }
}

/// `--otlp` end to end: real gRPC traffic through the tap, exported to a receiver that decodes every request with
/// the official opentelemetry-proto definitions; and the exporter's behaviour when the backend fails, is slow or dies.
@Suite(.serialized)
struct OTLPExportTests {
    static func attribute(_ span: [String: Any], _ key: String) -> Any? {
        ((span["attributes"] as? [String: Any])?[key] as? [String: Any])?["value"]
    }

    static func attributeType(_ span: [String: Any], _ key: String) -> String? {
        ((span["attributes"] as? [String: Any])?[key] as? [String: Any])?["type"] as? String
    }

    /// The tap in-process with an OTLP exporter and a span log beside the in-memory sink, run like `ProxyRuntime`
    /// runs them (`OTLPExporter.runPipeline`).
    static func withTap<T: Sendable>(
        upstream: String, dir: TempDir, configuration: OTLPExporter.Configuration, logger: Logger,
        _ body: (String, OTLPExporter, CollectingSpanSink) async throws -> T
    ) async throws -> T {
        let sink = CollectingSpanSink()
        let log = try SpanLogWriter(path: dir.file("spans.jsonl"))
        let exporter = OTLPExporter(
            configuration: configuration, group: MultiThreadedEventLoopGroup.singleton, logger: logger)
        let pipeline = SpanPipeline(sinks: [sink, log, exporter], logger: logger)
        let listen = TapAddress.unix(path: dir.file("tap.sock"))
        let proxy = TapProxy(
            configuration: ProxyConfiguration(listen: listen, upstream: try TapAddress(parsing: upstream)),
            pipeline: pipeline, group: MultiThreadedEventLoopGroup.singleton, logger: logger)
        try await proxy.start()
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await OTLPExporter.runPipeline(pipeline, exporter: exporter) }
            do {
                let result = try await body(listen.description, exporter, sink)
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

    static func configuration(_ url: String, _ encoding: OTLPEncoding) throws -> OTLPExporter.Configuration {
        var c = OTLPExporter.Configuration(
            endpoint: try OTLPEndpoint(parsing: url), encoding: encoding,
            resource: OTLPResource(serviceName: "tap-under-test", hostName: "test-host"))
        c.batchInterval = .milliseconds(100)
        c.shutdownTimeout = .seconds(3)
        return c
    }

    static func waitUntil(
        timeout: Duration = .seconds(20), _ what: String, _ condition: () throws -> Bool
    ) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if try condition() { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw PeerError("timed out waiting for \(what)")
    }

    static let hex = Set("0123456789abcdef")

    /// scenario → (RPC method, gRPC status code (none for a call reset by the client), OTLP status code)
    static let scenarios: [(String, String, Int?, Int)] = [
        ("unary", "Unary", 0, 1), ("server_stream", "ServerStream", 0, 1), ("error", "ServerStream", 3, 2),
        ("trailers_only", "Unary", 5, 2), ("cancel", "ServerStream", nil, 2),
    ]

    @Test(
        "real gRPC calls through the tap arrive at the OTLP receiver with the caller's trace, attributes and status",
        arguments: ["protobuf", "json"])
    func realTrafficIsExported(encodingName: String) async throws {
        let encoding = try #require(OTLPEncoding(rawValue: encodingName))
        let dir = try TempDir()
        defer { dir.cleanup() }
        let (server, echoAddress, _) = try await EchoPeerTests.startEchoServer(in: dir)
        defer { server.stop() }
        let receiver = try await OTLPReceiver.start(in: dir)
        defer { receiver.process.stop() }
        let (logger, logs) = CapturingLogHandler.logger()
        let authHex = String(repeating: "c0ffee", count: 10) + "abcd"

        let traces = Dictionary(
            uniqueKeysWithValues: Self.scenarios.enumerated().map { index, s in
                (
                    s.0,
                    (
                        String(format: "4bf92f3577b34da6a3ce929d0e0e%04x", index + 1),
                        String(format: "00f067aa0ba9%04x", index + 1)
                    )
                )
            })
        let tapSink = try await Self.withTap(
            upstream: echoAddress, dir: dir, configuration: try Self.configuration(receiver.url, encoding),
            logger: logger
        ) { tap, exporter, sink in
            for (scenario, _, _, _) in Self.scenarios {
                let (trace, parent) = traces[scenario]!
                let result = try await EchoPeerTests.client(
                    tap, scenario,
                    [
                        "--correlation-id", "otlp-\(encodingName)-\(scenario)", "--trace-id", trace, "--parent-span-id",
                        parent,
                        "--auth-hex", authHex,
                    ])
                #expect(result.status == 0, "\(scenario): \(result.stdout) \(result.stderr)")
            }
            try await Self.waitUntil("every scenario's span at the receiver") {
                try receiver.stats()["spans"] as? Int ?? 0 >= Self.scenarios.count
            }
            return sink
        }
        let tapSpans = tapSink.collected

        let stats = try receiver.stats()
        #expect(stats["decode_errors"] as? Int == 0, "receiver could not decode: \(stats["errors"] ?? "")")
        #expect((stats["encodings"] as? [String: Int])?[encodingName] ?? 0 >= 1)
        let received = try receiver.spans()
        #expect(received.count == tapSpans.count, "the receiver got exactly the spans the tap built")

        for (scenario, method, grpcCode, otlpCode) in Self.scenarios {
            let id = "otlp-\(encodingName)-\(scenario)"
            let mine = try receiver.spans(correlationID: id)
            #expect(mine.count == 1, "\(scenario): \(mine.count) spans")
            guard let span = mine.first else { continue }
            let (trace, parent) = traces[scenario]!
            #expect(span["encoding"] as? String == encodingName)
            #expect(span["traceId"] as? String == trace, "the caller's trace")
            #expect(span["parentSpanId"] as? String == parent, "the caller's span is the parent")
            let spanID = span["spanId"] as? String ?? ""
            #expect(
                spanID.count == 16 && spanID.allSatisfy { Self.hex.contains($0) }
                    && spanID != String(repeating: "0", count: 16))
            #expect(spanID != parent)
            #expect(span["name"] as? String == "taptest.Echo/\(method)")
            #expect(span["kind"] as? Int == 2, "SPAN_KIND_SERVER")
            #expect(span["flags"] as? Int == 1, "sampled")
            let status = span["status"] as? [String: Any]
            #expect(status?["code"] as? Int == otlpCode)
            #expect(Self.attribute(span, "rpc.system") as? String == "grpc")
            #expect(Self.attribute(span, "rpc.service") as? String == "taptest.Echo")
            #expect(Self.attribute(span, "rpc.method") as? String == method)
            #expect(Self.attribute(span, "rpc.grpc.status_code") as? Int == grpcCode)
            #expect(Self.attributeType(span, "rpc.grpc.status_code") == (grpcCode == nil ? nil : "int"))
            #expect(Self.attribute(span, "network.transport") as? String == "unix")
            #expect(Self.attribute(span, "server.address") as? String == echoAddress)
            let resource = span["resource"] as? [String: Any]
            #expect(resource?["service.name"] as? String == "tap-under-test")
            #expect(resource?["host.name"] as? String == "test-host")
            #expect(resource?["service.version"] as? String == GitalyTapVersion.current)
            #expect((span["scope"] as? [String: Any])?["name"] as? String == "gitaly-tap")

            // The same span as the tap built it (and wrote to the span log): every field, every attribute, typed.
            let built = try #require(tapSpans.first { $0.spanID.description == spanID })
            #expect(span["startTimeUnixNano"] as? UInt64 == built.startTimeUnixNano)
            #expect(span["endTimeUnixNano"] as? UInt64 == built.endTimeUnixNano)
            #expect(status?["message"] as? String == (built.status.message ?? ""))
            Self.expectSameAttributes(span, built.attributes, scenario)
            #expect((span["events"] as? [Any])?.count == built.events.count)
        }
        let everything = String(decoding: try JSONSerialization.data(withJSONObject: received), as: UTF8.self)
        #expect(!everything.contains(authHex), "authorization leaked into an exported span")
        #expect(!everything.contains("authorization"))

        // The span log and OTLP carry the same spans.
        let logLines = try String(contentsOfFile: dir.file("spans.jsonl"), encoding: .utf8).split(separator: "\n")
        let logIDs = Set(
            logLines.compactMap { line in
                (try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])?["spanId"] as? String
            })
        #expect(logIDs == Set(received.compactMap { $0["spanId"] as? String }))
        let finished = logs.all.last { $0.message == "OTLP export finished" }
        #expect(finished?.metadata["spans_sent"] == "\(received.count)")
        #expect(finished?.metadata["spans_dropped"] == "0")
    }

    static func expectSameAttributes(_ span: [String: Any], _ attributes: SpanAttributes, _ what: String) {
        let exported = span["attributes"] as? [String: [String: Any]] ?? [:]
        #expect(Set(exported.keys) == Set(attributes.keys), "\(what): attribute keys")
        for (key, value) in attributes {
            let got = exported[key]
            switch value {
            case .string(let s):
                #expect(got?["type"] as? String == "string" && got?["value"] as? String == s, "\(what) \(key)")
            case .int(let i):
                #expect(
                    got?["type"] as? String == "int" && (got?["value"] as? NSNumber)?.int64Value == i, "\(what) \(key)")
            case .bool(let b):
                #expect(got?["type"] as? String == "bool" && got?["value"] as? Bool == b, "\(what) \(key)")
            case .double(let d):
                #expect(got?["type"] as? String == "double", "\(what) \(key)")
                if d.isFinite { #expect(got?["value"] as? Double == d, "\(what) \(key)") }
            case .stringArray(let list):
                let values = (got?["value"] as? [[String: Any]])?.map { $0["value"] as? String }
                #expect(got?["type"] as? String == "array" && values == list, "\(what) \(key)")
            }
        }
    }

    @Test(
        "spans of every kind with parents, events and typed attributes export intact: caller → RPC → git process → region",
        arguments: ["protobuf", "json"])
    func anySpanExportsIntact(encodingName: String) async throws {
        let encoding = try #require(OTLPEncoding(rawValue: encodingName))
        let dir = try TempDir()
        defer { dir.cleanup() }
        let receiver = try await OTLPReceiver.start(in: dir)
        defer { receiver.process.stop() }
        let trace = TraceID(high: 0x0af7_6519_16cd_43dd, low: 0x8448_eb21_1c80_319c)
        let caller = SpanID(0xb7ad_6b71_6920_3331)
        let rpc = Span(
            traceID: trace, spanID: SpanID(0x1111), parentSpanID: caller,
            name: "gitaly.SmartHTTPService/PostUploadPackWithSidechannel",
            kind: .server, startTimeUnixNano: 1_700_000_000_000_000_000, endTimeUnixNano: 1_700_000_001_000_000_000,
            status: .ok, attributes: ["rpc.system": .string("grpc"), "rpc.grpc.status_code": .int(0)])
        let git = Span(
            traceID: trace, spanID: SpanID(0x2222), parentSpanID: rpc.spanID, name: "git upload-pack", kind: .internal,
            startTimeUnixNano: 1_700_000_000_100_000_000, endTimeUnixNano: 1_700_000_000_900_000_000,
            status: Span.Status(code: .error, message: "exit code 128"),
            attributes: [
                "git.command": .string("upload-pack"),
                "git.argv": .stringArray(["git", "upload-pack", "--stateless-rpc", "."]),
                "git.exit_code": .int(128), "trace2.sid": .string("20261125T104500.123456Z-H0a1b2c3d-P00001234"),
            ],
            events: [
                Span.Event(
                    name: "trace2.data", timeUnixNano: 1_700_000_000_200_000_000,
                    attributes: ["key": .string("negotiated"), "value": .int(-1)]),
                Span.Event(name: "exit", timeUnixNano: 1_700_000_000_900_000_000),
            ])
        let region = Span(
            traceID: trace, spanID: SpanID(0x3333), parentSpanID: git.spanID, name: "pack-objects: write",
            kind: .internal,
            startTimeUnixNano: 1_700_000_000_300_000_000, endTimeUnixNano: 1_700_000_000_800_000_000,
            status: Span.Status(code: .unset),
            attributes: [
                "trace2.category": .string("pack-objects"), "trace2.label": .string("write"),
                "trace2.ratio": .double(0.5),
                "trace2.nested": .bool(true), "trace2.empty": .string(""),
            ],
            sampled: false)
        let client = Span(
            traceID: TraceID(high: 0, low: 7), spanID: SpanID(0x4444), name: "connection", kind: .client,
            startTimeUnixNano: 5, endTimeUnixNano: 6, status: Span.Status(code: .unset))
        let all = [rpc, git, region, client]

        var configuration = try Self.configuration(receiver.url, encoding)
        configuration.batchSize = 3  // two requests: a full batch and a partial one
        let exporter = OTLPExporter(
            configuration: configuration, group: MultiThreadedEventLoopGroup.singleton,
            logger: CapturingLogHandler.logger().0)
        async let running: Void = exporter.run()
        for span in all { exporter.write(span) }
        try await Self.waitUntil("four spans at the receiver") { try receiver.stats()["spans"] as? Int == 4 }
        exporter.finish()
        await running

        #expect(try receiver.stats()["requests"] as? Int == 2)
        #expect(exporter.currentCounts.sent == 4)
        let received = try receiver.spans()
        for original in all {
            let got = try #require(
                received.first { $0["spanId"] as? String == original.spanID.description }, "\(original.name)")
            #expect(got["traceId"] as? String == original.traceID.description)
            #expect(got["parentSpanId"] as? String == (original.parentSpanID?.description ?? ""))
            #expect(got["name"] as? String == original.name)
            #expect(got["kind"] as? Int == ["server": 2, "internal": 1, "client": 3][original.kind.rawValue])
            #expect(got["flags"] as? Int == (original.sampled ? 1 : 0))
            #expect(got["startTimeUnixNano"] as? UInt64 == original.startTimeUnixNano)
            #expect(got["endTimeUnixNano"] as? UInt64 == original.endTimeUnixNano)
            let status = got["status"] as? [String: Any]
            #expect(status?["code"] as? Int == ["unset": 0, "ok": 1, "error": 2][original.status.code.rawValue])
            #expect(status?["message"] as? String == (original.status.message ?? ""))
            Self.expectSameAttributes(got, original.attributes, original.name)
            let events = got["events"] as? [[String: Any]] ?? []
            #expect(events.count == original.events.count)
            for (e, o) in zip(events, original.events) {
                #expect(e["name"] as? String == o.name)
                #expect(e["timeUnixNano"] as? UInt64 == o.timeUnixNano)
                Self.expectSameAttributes(e, o.attributes, "\(original.name) event \(o.name)")
            }
        }
        // The chain a Jaeger user sees: caller → RPC → git process → region.
        let byID = Dictionary(uniqueKeysWithValues: received.map { ($0["spanId"] as! String, $0) })
        var chain: [String] = []
        var cursor = byID[region.spanID.description]
        while let span = cursor {
            chain.append(span["name"] as! String)
            cursor = byID[span["parentSpanId"] as! String]
        }
        #expect(
            chain == [
                "pack-objects: write", "git upload-pack", "gitaly.SmartHTTPService/PostUploadPackWithSidechannel",
            ])
        #expect(byID[rpc.spanID.description]?["parentSpanId"] as? String == caller.description)
    }

    /// Runs `count` unary calls in one client process; returns the per-call latencies in ms.
    static func timedCalls(_ tap: String, _ count: Int, _ id: String) async throws -> [Double] {
        let result = try await EchoPeerTests.client(
            tap, "unary", ["--count", "\(count)", "--timing", "--correlation-id", id])
        #expect(result.status == 0, "calls \(id) failed: \(result.stderr.suffix(500))")
        return result.stdout.split(separator: "\n").compactMap { line in
            (try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])?["elapsed_ms"] as? Double
        }
    }

    static func summary(_ values: [Double]) -> String {
        guard !values.isEmpty else { return "no calls" }
        let sorted = values.sorted()
        let mean = values.reduce(0, +) / Double(values.count)
        let p50 = sorted[sorted.count / 2]
        let p99 = sorted[min(sorted.count - 1, sorted.count * 99 / 100)]
        return String(format: "n=%d mean=%.3f ms p50=%.3f ms p99=%.3f ms", values.count, mean, p50, p99)
    }

    @Test(
        "a failing, slow or dead backend never fails or blocks calls: 503s are retried, drops counted, export resumes after a restart"
    )
    func backendTroubleDoesNotTouchTraffic() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let (server, echoAddress, _) = try await EchoPeerTests.startEchoServer(in: dir)
        defer { server.stop() }
        var receiver = try await OTLPReceiver.start(in: dir, name: "otlp1")
        // Whichever receiver is current when the test ends (also on failure) is stopped.
        let current = Mutex(receiver.process)
        defer { current.withLock { $0 }.stop() }
        let port = receiver.port
        let (logger, logs) = CapturingLogHandler.logger()
        var configuration = try Self.configuration(receiver.url, .protobuf)
        configuration.batchSize = 16
        // Larger than any phase's call count, so that only the slow phase (which makes more calls) can fill it.
        configuration.queueCapacity = 256
        configuration.requestTimeout = .milliseconds(500)
        configuration.retry = OTLPRetryPolicy(
            maxAttempts: 3, initialBackoff: .milliseconds(50), maxBackoff: .milliseconds(200))
        configuration.logInterval = .milliseconds(200)
        var latencies: [String: [Double]] = [:]

        let exporter = try await Self.withTap(
            upstream: echoAddress, dir: dir, configuration: configuration, logger: logger
        ) {
            tap, exporter, sink in
            /// Waits for `condition`; a timeout reports the exporter's and the receiver's counts.
            func waitUntil(_ what: String, _ condition: () throws -> Bool) async throws {
                do {
                    try await Self.waitUntil(what, condition)
                } catch {
                    throw PeerError("\(error): \(exporter.currentCounts); receiver: \((try? receiver.stats()) ?? [:])")
                }
            }
            // 1. Live backend.
            latencies["live", default: []] += try await Self.timedCalls(tap, 200, "live")
            try await waitUntil("live spans exported") { exporter.currentCounts.sent >= 200 }
            #expect(try receiver.spans(correlationID: "live").count == 200)

            // 2. Two 503 answers (with Retry-After: 0), then success: the batch is retried and arrives.
            _ = try receiver.control("/control/fail?status=503&count=2&retry_after=0")
            let sentBefore = exporter.currentCounts.sent
            latencies["503", default: []] += try await Self.timedCalls(tap, 10, "retried")
            try await waitUntil("retried spans exported") { exporter.currentCounts.sent >= sentBefore + 10 }
            // How the 10 spans fall into batches depends on timing; the 503-answered batches were sent again.
            #expect(exporter.currentCounts.retried > 0, "the spans of the 503-answered batches were sent again")
            #expect(try receiver.stats()["failed_answers"] as? Int == 2)
            #expect(try receiver.spans(correlationID: "retried").count == 10)

            // 3. 503 for good: attempts run out, the batches are dropped as unavailable.
            _ = try receiver.control("/control/fail?status=503&count=1000")
            latencies["503", default: []] += try await Self.timedCalls(tap, 20, "exhausted")
            try await waitUntil("503 batches dropped") { exporter.currentCounts.droppedUnavailable >= 20 }
            _ = try receiver.control("/control/fail?status=503&count=0")

            // 4. A slow backend (answers after 2 s, requests time out after 0.5 s) while calls keep coming:
            //    the queue (256 spans) fills and further spans are dropped, counted.
            _ = try receiver.control("/control/delay?ms=2000")
            let droppedBefore = exporter.currentCounts.droppedUnavailable
            latencies["slow", default: []] += try await Self.timedCalls(tap, 600, "slow")
            try await waitUntil("slow backend: queue full and timeouts counted") {
                let c = exporter.currentCounts
                return c.droppedQueueFull > 0 && c.droppedUnavailable > droppedBefore
            }
            _ = try receiver.control("/control/delay?ms=0")

            // 5. Dead backend: connections refused.
            receiver.process.stop()
            let unavailableBefore = exporter.currentCounts.droppedUnavailable
            latencies["dead", default: []] += try await Self.timedCalls(tap, 200, "dead")
            try await waitUntil("dead backend: drops counted") {
                exporter.currentCounts.droppedUnavailable >= unavailableBefore + 16
            }
            // Alternate live-like (export idle) and dead blocks once more for the latency report.
            latencies["dead", default: []] += try await Self.timedCalls(tap, 200, "dead-2")

            // 6. The backend comes back on the same port: export resumes. Fewer calls than the queue holds, so none of
            //    these can be dropped for a full queue however loaded the machine is.
            receiver = try await OTLPReceiver.start(in: dir, port: port, name: "otlp2")
            current.withLock { $0 = receiver.process }
            latencies["live", default: []] += try await Self.timedCalls(tap, 40, "after-restart")
            try await waitUntil("export resumed after the restart") {
                try receiver.spans(correlationID: "after-restart").count == 40
            }
            let calls = latencies.values.reduce(0) { $0 + $1.count }
            #expect(calls == 1270)
            #expect(sink.collected.count == calls, "every call still produced its span in the tap")
            return exporter
        }

        let c = exporter.currentCounts
        #expect(c.received == c.sent + c.dropped, "every span is either sent or counted as dropped: \(c)")
        #expect(c.retried >= 10 && c.droppedQueueFull > 0 && c.droppedUnavailable > 0 && c.droppedRejected == 0)
        #expect(try receiver.stats()["decode_errors"] as? Int == 0)

        // The counts are logged: the failure once, periodic counts while they change, the totals at the end.
        let all = logs.all
        #expect(all.contains { $0.level == .warning && $0.message.hasPrefix("OTLP export failing") })
        #expect(all.contains { $0.level == .warning && $0.message.hasPrefix("OTLP export queue full") })
        #expect(all.contains { $0.message == "OTLP export works again" })
        #expect(all.contains { $0.message == "OTLP export counts" && $0.metadata["spans_dropped"] != "0" })
        let finished = try #require(all.last { $0.message == "OTLP export finished" })
        #expect(finished.metadata["spans_sent"] == "\(c.sent)")
        #expect(finished.metadata["spans_retried"] == "\(c.retried)")
        #expect(finished.metadata["spans_dropped"] == "\(c.dropped)")

        // And they are metrics.
        let metrics = TapMetrics()
        exporter.registerMetrics(in: metrics)
        let text = metrics.render()
        #expect(MetricsTests.value(text, "gitaly_tap_spans_exported_total ") == Double(c.sent))
        #expect(MetricsTests.value(text, "gitaly_tap_spans_export_retried_total ") == Double(c.retried))
        #expect(
            MetricsTests.value(text, "gitaly_tap_spans_export_dropped_total{reason=\"queue_full\"}")
                == Double(c.droppedQueueFull))
        #expect(
            MetricsTests.value(text, "gitaly_tap_spans_export_dropped_total{reason=\"unavailable\"}")
                == Double(c.droppedUnavailable))

        // Reported, not asserted: call latency through the tap while the backend is live, failing, slow, dead.
        for phase in ["live", "503", "slow", "dead"] {
            print("OTLP latency report: backend \(phase): \(Self.summary(latencies[phase] ?? []))")
        }
        print("OTLP export counts: \(c)")
    }

    @Test("the gitaly-tap executable exports with --otlp, --otlp-encoding and --service-name, and flushes on SIGTERM")
    func executableExportsAndFlushesOnSigterm() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let (echo, echoAddress, _) = try await EchoPeerTests.startEchoServer(in: dir)
        defer { echo.stop() }
        let receiver = try await OTLPReceiver.start(in: dir)
        defer { receiver.process.stop() }
        let tap = try PeerProcess(
            try Peers.tapExecutable(),
            [
                "proxy", "--listen", "unix:" + dir.file("tap.sock"), "--upstream", echoAddress, "--spans",
                dir.file("spans.jsonl"),
                "--otlp", receiver.url, "--otlp-encoding", "json", "--service-name", "gdk-tap", "--log-format", "json",
            ], dir: dir, name: "tap")
        defer { tap.stop() }
        try await tap.waitForFile(dir.file("tap.sock"))
        let result = try await EchoPeerTests.client(
            "unix:" + dir.file("tap.sock"), "unary",
            ["--count", "3", "--correlation-id", "cli", "--trace-id", "0af7651916cd43dd8448eb211c80319c"])
        #expect(result.status == 0, "\(result.stderr)")
        // SIGTERM right away: the spans may still be queued; the final flush must send them before the exit.
        tap.signal(SIGTERM)
        _ = try await ShutdownTests.waitExit(tap, timeout: .seconds(20))
        #expect(tap.process.terminationStatus == 0, "\(tap.stderr)")
        let spans = try receiver.spans(correlationID: "cli")
        #expect(spans.count == 3)
        for span in spans {
            #expect(span["encoding"] as? String == "json")
            #expect(span["traceId"] as? String == "0af7651916cd43dd8448eb211c80319c")
            #expect((span["resource"] as? [String: Any])?["service.name"] as? String == "gdk-tap")
            #expect((span["resource"] as? [String: Any])?["host.name"] as? String == ProcessInfo.processInfo.hostName)
        }
        let finished = tap.stderr.split(separator: "\n").first { $0.contains("OTLP export finished") }
        #expect(finished?.contains("\"spans_sent\":\"3\"") == true, "\(tap.stderr)")
    }
}
