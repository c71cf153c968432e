import Foundation
import NIOPosix
import TapServer
import TapTrace
import Testing

/// `--otlp` URL parsing, the retry policy, and the exporter's shutdown and rejection paths against the test receiver.
@Suite(.serialized)
struct OTLPExporterUnitTests {
    @Test("--otlp URLs: base URL gets /v1/traces, a full traces URL is kept, IPv6 and default port, clear errors")
    func endpointParsing() throws {
        #expect(
            try OTLPEndpoint(parsing: "http://127.0.0.1:4318")
                == OTLPEndpoint(host: "127.0.0.1", port: 4318, path: "/v1/traces"))
        #expect(
            try OTLPEndpoint(parsing: "http://localhost:4318/")
                == OTLPEndpoint(host: "localhost", port: 4318, path: "/v1/traces"))
        #expect(
            try OTLPEndpoint(parsing: "http://collector/otlp/v1/traces")
                == OTLPEndpoint(host: "collector", port: 80, path: "/otlp/v1/traces"))
        #expect(
            try OTLPEndpoint(parsing: "http://c:4318/base")
                == OTLPEndpoint(host: "c", port: 4318, path: "/base/v1/traces"))
        #expect(
            try OTLPEndpoint(parsing: "http://[::1]:4318") == OTLPEndpoint(host: "::1", port: 4318, path: "/v1/traces"))
        #expect(try OTLPEndpoint(parsing: "http://[::1]:4318").description == "http://[::1]:4318/v1/traces")
        for bad in [
            "127.0.0.1:4318", "https://jaeger:4318", "http://:4318", "http://h:0", "http://h:99999", "http://h:x",
            "http://u:p@h:1", "http://h:1/?q=1", "http://[::1", "grpc://h:4317", "",
        ] {
            #expect(throws: OTLPEndpoint.ParseError.self, "\(bad)") { try OTLPEndpoint(parsing: bad) }
        }
        do {
            _ = try OTLPEndpoint(parsing: "https://jaeger:4318")
        } catch {
            #expect(error.description.contains("https is not supported"))
        }
    }

    @Test("retry policy: only 429/502/503/504, doubling waits with jitter up to a cap, Retry-After honoured and capped")
    func retryPolicy() {
        for status in [429, 502, 503, 504] { #expect(OTLPRetryPolicy.isRetryable(status: status)) }
        for status in [200, 400, 401, 403, 404, 413, 500, 501] { #expect(!OTLPRetryPolicy.isRetryable(status: status)) }
        let policy = OTLPRetryPolicy(
            maxAttempts: 5, initialBackoff: .milliseconds(100), maxBackoff: .milliseconds(500),
            maxRetryAfter: .seconds(3))
        #expect(policy.delay(afterAttempt: 1, retryAfter: nil, jitter: 1) == .milliseconds(100))
        #expect(policy.delay(afterAttempt: 2, retryAfter: nil, jitter: 1) == .milliseconds(200))
        #expect(policy.delay(afterAttempt: 3, retryAfter: nil, jitter: 1) == .milliseconds(400))
        #expect(policy.delay(afterAttempt: 4, retryAfter: nil, jitter: 1) == .milliseconds(500))
        #expect(policy.delay(afterAttempt: 3, retryAfter: nil, jitter: 0) == .milliseconds(200))
        #expect(policy.delay(afterAttempt: 5, retryAfter: nil, jitter: 1) == nil, "attempts used up")
        #expect(policy.delay(afterAttempt: 1, retryAfter: .seconds(2), jitter: 0.3) == .seconds(2))
        #expect(policy.delay(afterAttempt: 1, retryAfter: .seconds(120), jitter: 0.3) == .seconds(3))
        #expect(OTLPRetryPolicy.parseRetryAfter(" 7 ") == .seconds(7))
        #expect(OTLPRetryPolicy.parseRetryAfter("0") == .zero)
        #expect(OTLPRetryPolicy.parseRetryAfter("Wed, 21 Oct 2015 07:28:00 GMT") == nil)
        #expect(OTLPRetryPolicy.parseRetryAfter("-3") == nil)
        #expect(OTLPRetryPolicy.parseRetryAfter("99999999999999999999999") == nil)
        #expect(OTLPRetryPolicy.parseRetryAfter(nil) == nil)
    }

    static func span(_ n: UInt64) -> Span {
        Span(
            traceID: TraceID(high: 1, low: n), spanID: SpanID(n), name: "s\(n)", kind: .server, startTimeUnixNano: n,
            endTimeUnixNano: n + 1)
    }

    @Test("finish() sends what is queued in a final flush, without waiting for the batch interval")
    func finalFlushSendsTheRest() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let receiver = try await OTLPReceiver.start(in: dir)
        defer { receiver.process.stop() }
        var configuration = try OTLPExportTests.configuration(receiver.url, .json)
        configuration.batchInterval = .seconds(3600)
        let (logger, logs) = CapturingLogHandler.logger()
        let exporter = OTLPExporter(
            configuration: configuration, group: MultiThreadedEventLoopGroup.singleton, logger: logger)
        async let running: Void = exporter.run()
        for n: UInt64 in 1...7 { exporter.write(Self.span(n)) }
        exporter.finish()
        await running
        #expect(exporter.currentCounts.sent == 7)
        #expect(try receiver.stats()["spans"] as? Int == 7)
        #expect(logs.all.last?.message == "OTLP export finished")
        #expect(logs.all.last?.metadata["spans_sent"] == "7")
        exporter.write(Self.span(8))
        #expect(exporter.currentCounts.droppedShutdown == 1, "a span after finish() is dropped and counted")
    }

    @Test("the final flush ends at the shutdown time limit: a request still in flight is cut and its spans counted")
    func shutdownTimeLimitCutsASlowBackend() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let receiver = try await OTLPReceiver.start(in: dir)
        defer { receiver.process.stop() }
        _ = try receiver.control("/control/delay?ms=20000")
        var configuration = try OTLPExportTests.configuration(receiver.url, .protobuf)
        configuration.requestTimeout = .seconds(60)
        configuration.shutdownTimeout = .milliseconds(300)
        let (logger, logs) = CapturingLogHandler.logger()
        let exporter = OTLPExporter(
            configuration: configuration, group: MultiThreadedEventLoopGroup.singleton, logger: logger)
        async let running: Void = exporter.run()
        for n: UInt64 in 1...5 { exporter.write(Self.span(n)) }
        try await OTLPExportTests.waitUntil("the request to be in flight") {
            try receiver.stats()["requests"] as? Int == 1
        }
        for n: UInt64 in 6...9 { exporter.write(Self.span(n)) }
        exporter.finish()
        await running
        let c = exporter.currentCounts
        #expect(c.sent == 0)
        #expect(c.droppedShutdown == 9, "\(c)")
        #expect(logs.all.contains { $0.message.hasPrefix("OTLP export: shutdown time limit reached") })
    }

    @Test("a non-retryable answer (400) drops the batch at once, counted as rejected, without retries")
    func rejectedBatchIsNotRetried() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let receiver = try await OTLPReceiver.start(in: dir)
        defer { receiver.process.stop() }
        _ = try receiver.control("/control/fail?status=400&count=1")
        let configuration = try OTLPExportTests.configuration(receiver.url, .protobuf)
        let (logger, logs) = CapturingLogHandler.logger()
        let exporter = OTLPExporter(
            configuration: configuration, group: MultiThreadedEventLoopGroup.singleton, logger: logger)
        async let running: Void = exporter.run()
        for n: UInt64 in 1...3 { exporter.write(Self.span(n)) }
        try await OTLPExportTests.waitUntil("the batch to be rejected") { exporter.currentCounts.droppedRejected == 3 }
        for n: UInt64 in 4...5 { exporter.write(Self.span(n)) }
        try await OTLPExportTests.waitUntil("the next batch to be sent") { exporter.currentCounts.sent == 2 }
        exporter.finish()
        await running
        let c = exporter.currentCounts
        #expect(c.retried == 0 && c.droppedRejected == 3 && c.sent == 2)
        #expect(try receiver.stats()["requests"] as? Int == 2)
        let warning = logs.all.first { $0.message.hasPrefix("OTLP export failing") }
        #expect(warning?.metadata["reason"]?.hasPrefix("HTTP 400") == true)
    }

    /// POSTs `body` to the receiver's /v1/traces; returns the status line.
    static func post(_ port: Int, _ body: [UInt8], contentType: String) throws -> String {
        let socket = try RawSocket(connectingTo: "tcp://127.0.0.1:\(port)")
        let head = "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: \(contentType)\r\n"
            + "Content-Length: \(body.count)\r\nConnection: close\r\n\r\n"
        try socket.write(Array(head.utf8) + body)
        var bytes: [UInt8] = []
        _ = try socket.readToEnd(timeout: 10) { bytes += $0 }
        return String(decoding: bytes, as: UTF8.self).components(separatedBy: "\r\n")[0]
    }

    @Test("the receiver is strict: it takes the encoders' output and rejects what OTLP/JSON forbids")
    func receiverRejectsNonOTLPJSON() async throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let receiver = try await OTLPReceiver.start(in: dir)
        defer { receiver.process.stop() }
        let spans = [Self.span(1), Self.span(2)]
        let resource = OTLPResource()
        #expect(try Self.post(receiver.port, OTLPJSONEncoder.encode(spans, resource: resource), contentType: "application/json").contains(" 200 "))
        #expect(
            try Self.post(receiver.port, OTLPProtobufEncoder.encode(spans, resource: resource), contentType: "application/x-protobuf")
                .contains(" 200 "))
        let good = String(decoding: OTLPJSONEncoder.encode([Self.span(3)], resource: resource), as: UTF8.self)
        let bad = [
            // ids in base64, as plain proto3 JSON would write them
            good.replacingOccurrences(of: "\"spanId\":\"0000000000000003\"", with: "\"spanId\":\"AAAAAAAAAAM=\""),
            // proto field names instead of lowerCamelCase
            good.replacingOccurrences(of: "\"startTimeUnixNano\"", with: "\"start_time_unix_nano\""),
            // an enum by name where OTLP/JSON wants the integer
            good.replacingOccurrences(of: "\"kind\":2", with: "\"kind\":\"SPAN_KIND_SERVER\""),
            // a misspelt field
            good.replacingOccurrences(of: "\"traceId\"", with: "\"traceID\""),
        ]
        for body in bad {
            #expect(try Self.post(receiver.port, Array(body.utf8), contentType: "application/json").contains(" 400 "), "\(body)")
        }
        #expect(try Self.post(receiver.port, [0x0a, 0xff], contentType: "application/x-protobuf").contains(" 400 "))
        let stats = try receiver.stats()
        #expect(stats["decode_errors"] as? Int == bad.count + 1)
        #expect(stats["spans"] as? Int == 4)
    }
}
